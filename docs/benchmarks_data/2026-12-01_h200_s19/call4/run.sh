#!/usr/bin/env bash
# Nineteenth session, call 4 (warm machine after call 3): the GPU kernel suite on the start push (call 3 ran out
# of time after 12 tests), then D 128 16k long sustained against adasplash with what time is left.
set -o pipefail
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.cache/triton
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
timeout $((330 - SECONDS)) python3 -m pytest -q -rA tests/test_kernel_gpu.py > $OUT/gpu_tests.log 2>&1
echo "tests done at $SECONDS s (rc $?)"; grep -E "passed|failed|PASSED|FAILED|ERROR" $OUT/gpu_tests.log | tail -30
timeout $((585 - SECONDS)) python3 -m scripts.bench_attention --seqlens 16384 --head-dims 128 --regimes long \
  --methods adasplash ours --timing sustained --json $OUT/sustained_16k.json > $OUT/sustained_16k.log 2>&1
echo "16k done at $SECONDS s (rc $?)"
grep -E "^\| (ours|adasplash)" $OUT/sustained_16k.log | cut -d'|' -f2-8,15-17
