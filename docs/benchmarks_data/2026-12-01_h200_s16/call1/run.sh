#!/usr/bin/env bash
# Session 18, first device call: per-kernel A/B of exp/wide-backward (4cc9cde; both backward kernels over two tiles
# per program with 8 warps at D 128). Builds in .cache/ab28: main, wide, wide_dq3 (wide, dQ with 3 stages at 128),
# wide64 (wide at 64 too). Offline (Triton 3.6): wide dK/dV D128 255 regs/40 B/128.5 KiB/694 instr per warp-iteration
# (main 255/24 B/96.5 KiB/557); wide dQ D128 198/0/128 KiB/469 (main 177/0/96 KiB/470).
set -o pipefail
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.cache/triton
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $OUT/card.txt
python3 -c "import torch, triton, adasplash; print(torch.__version__, triton.__version__, adasplash.__file__)" > $OUT/versions.txt 2>&1
mkdir -p $OUT/ab128 $OUT/ab64
V128=".cache/ab28/main .cache/ab28/wide .cache/ab28/wide_dq3"
timeout 300 python3 -m scripts.ab_kernels --tool kernel_times --compile-first --variants $V128 --rounds 2 --timeout 120 \
  --out $OUT/ab128 -- --seqlens 4096 8192 --head-dims 128 --regimes long sparse > $OUT/ab128.log 2>&1
echo ab128 $SECONDS
python3 -m scripts.ab_kernels --tool kernel_times --table-only --variants $V128 --out $OUT/ab128 > $OUT/ab128_table.md 2>&1
grep -E "^ours|dkdv_kernel \||dq_kernel \||lists|all kernels" $OUT/ab128_table.md | cut -c1-220 | head -30
V64=".cache/ab28/main .cache/ab28/wide64"
timeout $((560 - SECONDS)) python3 -m scripts.ab_kernels --tool kernel_times --compile-first --variants $V64 --rounds 2 --timeout 80 \
  --out $OUT/ab64 -- --seqlens 4096 8192 --head-dims 64 --regimes long > $OUT/ab64.log 2>&1
echo ab64 $SECONDS
python3 -m scripts.ab_kernels --tool kernel_times --table-only --variants $V64 --out $OUT/ab64 > $OUT/ab64_table.md 2>&1
grep -E "^ours|dkdv_kernel \||dq_kernel \||lists|all kernels" $OUT/ab64_table.md | cut -c1-220 | head -20
cd $OUT && tar -czf s18run1.tgz ab128 ab64 *.log *.md *.txt && rm -rf ab128 ab64
