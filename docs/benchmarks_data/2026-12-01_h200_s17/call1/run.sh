#!/usr/bin/env bash
# Seventeenth session, first device call: per-kernel A/B of exp/sat-gap (77e3579; u = [z - t]_+ as one
# FFMA.SAT) against main 8203ee2. Offline (Triton 3.6): every score loop -32 instructions per tile.
set -o pipefail
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.cache/triton
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader > $OUT/card.txt
python3 -c "import torch, triton, adasplash; print(torch.__version__, triton.__version__, adasplash.__file__)" > $OUT/versions.txt 2>&1
mkdir -p $OUT/ab128 $OUT/ab64
V=".cache/ab29/main .cache/ab29/sat"
timeout 330 python3 -m scripts.ab_kernels --tool kernel_times --compile-first --variants $V --rounds 2 --timeout 120 \
  --out $OUT/ab128 -- --seqlens 4096 8192 --head-dims 128 --regimes long trained > $OUT/ab128.log 2>&1
echo ab128 $SECONDS
python3 -m scripts.ab_kernels --tool kernel_times --table-only --variants $V --out $OUT/ab128 > $OUT/ab128_table.md 2>&1
timeout $((570 - SECONDS)) python3 -m scripts.ab_kernels --tool kernel_times --compile-first --variants $V --rounds 2 --timeout 80 \
  --out $OUT/ab64 -- --seqlens 4096 8192 --head-dims 64 --regimes long > $OUT/ab64.log 2>&1
echo ab64 $SECONDS
python3 -m scripts.ab_kernels --tool kernel_times --table-only --variants $V --out $OUT/ab64 > $OUT/ab64_table.md 2>&1
cd $OUT && tar -czf s17run1.tgz ab128 ab64 *.log *.md *.txt && rm -rf ab128 ab64
grep -E "^\| (ours|case|N)|threshold|output|dkdv_kernel \||dq_kernel \||all kernels" ab128_table.md ab64_table.md | cut -c1-250 | head -60
