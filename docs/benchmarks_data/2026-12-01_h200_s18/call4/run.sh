#!/usr/bin/env bash
# Eighteenth session, call 4: the sustained clock window fixed (3850745): adasplash and ours, D 128 4k and 8k long,
# sustained timing, so that each row's SM clock and power are those of its timed half.
set -o pipefail
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.cache/triton
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
git rev-parse HEAD > $OUT/commit.txt 2>/dev/null
timeout $((440 - SECONDS)) python3 -m scripts.bench_attention --seqlens 4096 8192 --head-dims 128 --regimes long \
  --methods adasplash ours --timing sustained --json $OUT/sustained.json > $OUT/sustained.log 2>&1
echo "sustained done at $SECONDS s (rc $?)"
grep -E "^\| (ours|adasplash)" $OUT/sustained.log | cut -d'|' -f2-8,15-17
