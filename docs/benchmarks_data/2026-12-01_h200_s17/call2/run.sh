#!/usr/bin/env bash
# Seventeenth session, second device call: per-kernel A/B of main 8203ee2, sat (77e3579) and mix (sat with the
# backward kernels at head dim 128 and the fused final pass as on main); then adasplash against mix, graph-timed.
set -o pipefail
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.cache/triton
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
mkdir -p $OUT/ab
V=".cache/ab29/main .cache/ab29/sat .cache/ab29/mix"
timeout 300 python3 -m scripts.ab_kernels --tool kernel_times --compile-first --variants $V --rounds 2 --timeout 120 \
  --out $OUT/ab -- --seqlens 4096 8192 --head-dims 128 64 --regimes long > $OUT/ab.log 2>&1
echo ab $SECONDS
python3 -m scripts.ab_kernels --tool kernel_times --table-only --variants $V --out $OUT/ab > $OUT/ab_table.md 2>&1
cd .cache/ab29/mix
for d in 64 128; do
  n="4096"; [ $d = 128 ] && n="4096 8192"
  timeout $((585 - SECONDS)) python3 -m scripts.bench_attention --seqlens $n --head-dims $d --regimes long --methods adasplash ours \
    --timing graph --json $OUT/graph_d$d.json > $OUT/graph_d$d.log 2>&1
  echo graph d$d $SECONDS
done
cd $OUT && tar -czf s17run2.tgz ab *.log *.md *.json && rm -rf ab
grep -E "^ours|tau_kernel|output_kernel|dkdv_kernel \||dq_kernel \||all kernels" ab_table.md | cut -c1-200 | head -40
grep -hE "^\| (ours|adasplash)" graph_d*.log | cut -c1-200
