#!/usr/bin/env bash
# Prepared in session 14 for the next session's first device call: per-kernel A/B of the two ready experiments.
# .cache/ab25 was built by these steps in session 14 (main 6bfa714); rebuild only if main or a branch moved.
# Before (rebase both branches on main first if main moved):
#   rm -rf .cache/ab25 && for v in main:main ol:exp/own-lists sub:exp/dkdv-sub; do n=${v%%:*}; r=${v#*:};
#   mkdir -p .cache/ab25/$n && git archive $r kernels scripts tests | tar -x -C .cache/ab25/$n; done
#   cp -r .cache/ab25/sub .cache/ab25/sub_s3 && sed -i 's/_LAUNCH_OPTIONS = {"bwd_dkdv": {128: dict(num_stages=2)}/_LAUNCH_OPTIONS = {"bwd_dkdv": {128: dict(num_stages=3)}/' .cache/ab25/sub_s3/kernels/entmax_attention.py
#   cp -r .cache/ab25/sub .cache/ab25/sub64 && sed -i 's/^_DKDV_QUERY_ROWS = {128: 32}/_DKDV_QUERY_ROWS = {64: 32, 128: 32}/' .cache/ab25/sub64/kernels/entmax_attention.py
#   cp -r .cache/ab25/main .cache/ab25/dq_s1c168 && sed -i 's/"bwd_dq": {128: dict(num_stages=2)}}/"bwd_dq": {128: dict(num_stages=1, maxnreg=168)}}/' .cache/ab25/dq_s1c168/kernels/entmax_attention.py
#   cp -r .cache/ab25/main .cache/ab25/dq64_s2 && sed -i 's/"bwd_dq": {128: dict(num_stages=2)}}/"bwd_dq": {128: dict(num_stages=2), 64: dict(num_stages=2)}}/' .cache/ab25/dq64_s2/kernels/entmax_attention.py
#   cp -r .cache/ab25/main .cache/ab25/kv64_s1c168 && sed -i 's/^_LAUNCH_OPTIONS = {"bwd_dkdv": {128: dict(num_stages=2)}/_LAUNCH_OPTIONS = {"bwd_dkdv": {128: dict(num_stages=2), 64: dict(num_stages=1, maxnreg=168)}/' .cache/ab25/kv64_s1c168/kernels/entmax_attention.py
#   (grep that the five seds took: grep -n "^_LAUNCH_OPTIONS\|^_DKDV_QUERY_ROWS" .cache/ab25/*/kernels/entmax_attention.py). Run with carry [".cache/ab25", ".cache/s16run1.sh", ".whl"], timeout 600.
# Offline (Triton 3.6): dK/dV D 128 whole tiles 255 regs/24 B spill/557 instr per 64 queries; sub 32 2 stages 243/0/2x414;
# 3 stages 232/0/2x419 (82 KiB, two programs); D 64 sub 32 158 regs (three programs) 2x365 against 227/504.
# own-lists: dK/dV D 64 224 regs, D 128 255/28 B; its compaction loop 69-73 instructions per 128 query tiles.
# dq_s1c168: the dQ kernel at D 128 with 1 stage and a 168-register cap: 168 regs, 16 B spilled, 64 KiB shared, loop 473
# instructions (main: 2 stages, 177 regs, 96 KiB, 470), so three programs per multiprocessor instead of two.
# dq64_s2: the dQ kernel at D 64 with 2 stages: 122 regs, 48 KiB, loop 423 (main: 3 stages, 154 regs, 64 KiB, 431), so
# four programs per multiprocessor instead of three (the ninth session's cap of 128 on it changed nothing because
# 3 stages' shared memory already limited it to three).
# kv64_s1c168: the dK/dV kernel at D 64 (pointers) with 1 stage and a 168 cap: 168 regs, no spill, 33 KiB, loop 484
# (main: 3 stages, 227 regs offline / 218 GPU, 65 KiB, 504), so three programs per multiprocessor instead of two (the
# ninth session's cap of 168 with 3 stages spilled 36 bytes and was slower).
# The JSON files are saved after every case now: a cut process still leaves its finished cases.
set -o pipefail
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.cache/triton
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $OUT/card.txt
mkdir -p $OUT/ab64 $OUT/ab128 $OUT/abg
# 1. Per-kernel GPU time at D 64: own-lists (its dK/dV kernel absorbs the list compaction: compare its dK/dV time with
#    main's dK/dV + lists), dK/dV in 32-row steps, dQ with 2 stages, dK/dV with 1 stage and a 168 cap.
V64=".cache/ab25/main .cache/ab25/ol .cache/ab25/sub64 .cache/ab25/dq64_s2 .cache/ab25/kv64_s1c168"
timeout 220 python3 -m scripts.ab_kernels --tool kernel_times --compile-first --variants $V64 --rounds 2 --timeout 60 \
  --out $OUT/ab64 -- --seqlens 4096 8192 --head-dims 64 --regimes long > $OUT/ab64.log 2>&1
echo ab64 $SECONDS
python3 -m scripts.ab_kernels --tool kernel_times --table-only --variants $V64 --out $OUT/ab64 > $OUT/ab64_table.md 2>&1
grep -E "^ours|dkdv_kernel \||dq_kernel \||lists|all kernels" $OUT/ab64_table.md | cut -c1-200 | head -24
# 2. The same at D 128: dK/dV in 32-row steps with 2 and 3 stages, dQ with 1 stage and a 168 cap.
V128=".cache/ab25/main .cache/ab25/sub .cache/ab25/sub_s3 .cache/ab25/dq_s1c168"
timeout 220 python3 -m scripts.ab_kernels --tool kernel_times --compile-first --variants $V128 --rounds 2 --timeout 90 \
  --out $OUT/ab128 -- --seqlens 4096 8192 --head-dims 128 --regimes long > $OUT/ab128.log 2>&1
echo ab128 $SECONDS
python3 -m scripts.ab_kernels --tool kernel_times --table-only --variants $V128 --out $OUT/ab128 > $OUT/ab128_table.md 2>&1
grep -E "^ours|dkdv_kernel \||dq_kernel \||all kernels" $OUT/ab128_table.md | cut -c1-200 | head -20
# 3. Whole-call graph time, main vs own-lists (a launch fewer shows in the graph, not in kernel sums), with adasplash.
timeout $((585 - SECONDS)) python3 -m scripts.ab_kernels --tool bench_attention --variants .cache/ab25/main .cache/ab25/ol \
  --rounds 2 --timeout 100 --out $OUT/abg -- --methods adasplash ours --seqlens 4096 --head-dims 64 128 --regimes long \
  --timing graph > $OUT/abg.log 2>&1
echo abg $SECONDS; grep -E "ours|adasplash" $OUT/abg.log | tail -12
cd $OUT && tar -czf s16run1.tgz ab64 ab128 abg *.log *.md card.txt && rm -rf ab64 ab128 abg
