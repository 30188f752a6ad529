#!/usr/bin/env bash
# Eighteenth session, call 2: adasplash and ours, D 128 16k long: sustained timing, then graph timing, on main.
set -o pipefail
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.cache/triton
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
git rev-parse HEAD > $OUT/commit.txt 2>/dev/null
for t in sustained graph; do
  timeout $((590 - SECONDS)) python3 -m scripts.bench_attention --seqlens 16384 --head-dims 128 --regimes long \
    --methods adasplash ours --timing $t --json $OUT/${t}_16k.json > $OUT/${t}_16k.log 2>&1
  echo "$t done at $SECONDS s (rc $?)"
done
for t in sustained graph; do echo "== $t"; grep -E "^\| (ours|adasplash)" $OUT/${t}_16k.log | cut -d'|' -f2-8,15-17; done
