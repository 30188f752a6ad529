#!/usr/bin/env bash
# Nineteenth session, call 2: per-kernel A/B of the start push (START_PUSH, working tree) against main (HEAD),
# D 128 and 64, 4k and 8k, long and trained regimes, two alternated rounds (kernel_times).
set -o pipefail
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.cache/triton
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
timeout $((570 - SECONDS)) python3 -m scripts.ab_kernels --tool kernel_times --compile-first --variants .cache/ab30/main .cache/ab30/push \
  --rounds 2 --out $OUT/ab -- --seqlens 4096 8192 --head-dims 128 64 --regimes long trained > $OUT/ab.log 2>&1
echo "ab done at $SECONDS s (rc $?)"
tail -60 $OUT/ab.log
