#!/usr/bin/env bash
# Nineteenth session, call 1: D 128 8k long, sustained timing. Process 1: adasplash, ours and ours with 0, 1, 2
# refinement passes at most (what a pass costs, forward and energy); process 2: adasplash and ours again.
# The rows' fwd_power_w splits each method's energy per call into forward and backward.
set -o pipefail
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.cache/triton
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
git rev-parse HEAD > $OUT/commit.txt 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader > $OUT/card.txt
timeout $((400 - SECONDS)) python3 -m scripts.bench_attention --seqlens 8192 --head-dims 128 --regimes long \
  --methods adasplash ours --ours-n-iter 0 1 2 --timing sustained --json $OUT/sustained_a.json > $OUT/sustained_a.log 2>&1
echo "a done at $SECONDS s (rc $?)"
timeout $((580 - SECONDS)) python3 -m scripts.bench_attention --seqlens 8192 --head-dims 128 --regimes long \
  --methods adasplash ours --timing sustained --json $OUT/sustained_b.json > $OUT/sustained_b.log 2>&1
echo "b done at $SECONDS s (rc $?)"
for f in a b; do echo "== $f"; grep -E "^\| (ours|adasplash)" $OUT/sustained_$f.log | cut -d'|' -f2-8,15-17; done
