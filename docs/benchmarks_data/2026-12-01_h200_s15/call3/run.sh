#!/usr/bin/env bash
# Device call 3 (session 15), main 9b84819. carry [".cache/ab26", ".cache/s16run3.sh", ".whl"]
# 1. Per-kernel A/B at D 64 (4k, 8k long): every launch with 4 pipeline stages (st4) against main's 3; each kernel's
#    time reads separately (offline, Triton 3.6: tau 128 regs 40 KiB, output 243 regs 73 KiB, dK/dV 225 regs 82 KiB:
#    the same programs per multiprocessor as with 3 stages, except dQ, 81 KiB: two instead of three).
# 2. D 128 16k long, wall-clock, adasplash and ours (main with own-lists).
set -o pipefail
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.cache/triton
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $OUT/card.txt
mkdir -p $OUT/ab64
V=".cache/ab26/main .cache/ab26/st4"
timeout 200 python3 -m scripts.ab_kernels --tool kernel_times --compile-first --variants $V --rounds 2 --timeout 80 \
  --out $OUT/ab64 -- --seqlens 4096 8192 --head-dims 64 --regimes long > $OUT/ab64.log 2>&1
echo ab64 $SECONDS
python3 -m scripts.ab_kernels --tool kernel_times --table-only --variants $V --out $OUT/ab64 > $OUT/ab64_table.md 2>&1
grep -E "^ours|kernel \||all kernels" $OUT/ab64_table.md | cut -c1-200 | head -24
timeout $((575 - SECONDS)) python3 -m scripts.bench_attention --seqlens 16384 --head-dims 128 --regimes long --methods adasplash ours \
  --json $OUT/wall_d128_16k.json > $OUT/wall_d128_16k.log 2>&1; echo s2 $SECONDS
grep -E "ms" $OUT/wall_d128_16k.log | cut -c1-150 | tail -4
cd $OUT && tar -czf s16run3.tgz ab64 && rm -rf ab64
