#!/usr/bin/env bash
# Nineteenth session, call 3: the start push (working tree) against adasplash, D 128 long, sustained timing:
# 4k and 8k in one process, 8k again in a second; then the GPU kernel suite on the tree.
set -o pipefail
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.cache/triton
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader > $OUT/card.txt
timeout $((330 - SECONDS)) python3 -m scripts.bench_attention --seqlens 4096 8192 --head-dims 128 --regimes long \
  --methods adasplash ours --timing sustained --json $OUT/sustained_a.json > $OUT/sustained_a.log 2>&1
echo "a done at $SECONDS s (rc $?)"
timeout $((420 - SECONDS)) python3 -m scripts.bench_attention --seqlens 8192 --head-dims 128 --regimes long \
  --methods adasplash ours --timing sustained --json $OUT/sustained_b.json > $OUT/sustained_b.log 2>&1
echo "b done at $SECONDS s (rc $?)"
timeout $((585 - SECONDS)) python3 -m pytest -q tests/test_kernel_gpu.py > $OUT/gpu_tests.log 2>&1
echo "tests done at $SECONDS s (rc $?)"; tail -3 $OUT/gpu_tests.log
for f in a b; do echo "== $f"; grep -E "^\| (ours|adasplash)" $OUT/sustained_$f.log | cut -d'|' -f2-8,15-17; done
