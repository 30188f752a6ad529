#!/usr/bin/env bash
# Seventeenth session, GPU tests of exp/sat-gap (e9f1043): the GPU suite, then the kernel and row-wise tests on the
# changed paths, compiled.
set -o pipefail
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.cache/triton
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
timeout 330 python3 -m pytest -q -x tests/test_kernel_gpu.py > $OUT/gputest.log 2>&1; echo gpu rc=$? $SECONDS; tail -3 $OUT/gputest.log
timeout $((560 - SECONDS)) python3 -m pytest -q tests/test_kernel_entmax.py tests/test_kernel_entmax_attention.py \
  -k "seed or sum_to_one or expansion or large_logits or histogram_binned or tile_gaps or near_uniform or gap_below_one or support or past_the_end or matches_reference" \
  > $OUT/gputest_kernels.log 2>&1; echo kernels rc=$? $SECONDS; tail -3 $OUT/gputest_kernels.log
