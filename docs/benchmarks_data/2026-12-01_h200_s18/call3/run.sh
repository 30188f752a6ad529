#!/usr/bin/env bash
# Eighteenth session, call 3: adasplash and ours, D 128 32k long: sustained timing, then wall if time is left, on main.
set -o pipefail
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.cache/triton
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
git rev-parse HEAD > $OUT/commit.txt 2>/dev/null
for t in sustained wall; do
  timeout $((590 - SECONDS)) python3 -m scripts.bench_attention --seqlens 32768 --head-dims 128 --regimes long \
    --methods adasplash ours --timing $t --json $OUT/${t}_32k.json > $OUT/${t}_32k.log 2>&1
  echo "$t done at $SECONDS s (rc $?)"
done
for t in sustained wall; do echo "== $t"; grep -E "^\| (ours|adasplash)" $OUT/${t}_32k.log | cut -d'|' -f2-8,15-17; done
