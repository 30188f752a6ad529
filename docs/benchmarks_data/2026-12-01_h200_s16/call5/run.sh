#!/usr/bin/env bash
# D 128 32k long beside adasplash (wall with >= 30 timed calls, then graph), main at $(git rev-parse HEAD).
set -o pipefail
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.cache/triton
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
git rev-parse HEAD > $OUT/commit.txt 2>/dev/null; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader > $OUT/card.txt
for t in wall graph; do
  timeout $((590 - SECONDS)) python3 -m scripts.bench_attention --seqlens 32768 --head-dims 128 --regimes long --methods adasplash ours \
    --timing $t --json $OUT/${t}_d128_32k.json > $OUT/${t}_d128_32k.log 2>&1
  echo $t $SECONDS; grep -E "^\| (ours|adasplash)" $OUT/${t}_d128_32k.log
done
