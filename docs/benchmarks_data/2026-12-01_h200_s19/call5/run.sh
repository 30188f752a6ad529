#!/usr/bin/env bash
# Nineteenth session, call 5: start push + alpha 1.5's stop residual 2e-2 (working tree) against adasplash,
# D 128 8k long, sustained timing in two processes; then 4k if time is left.
set -o pipefail
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.cache/triton
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
for p in a b; do
  timeout $((300 - SECONDS)) python3 -m scripts.bench_attention --seqlens 8192 --head-dims 128 --regimes long \
    --methods adasplash ours --timing sustained --json $OUT/sustained_$p.json > $OUT/sustained_$p.log 2>&1
  echo "$p done at $SECONDS s (rc $?)"
done
if [ $SECONDS -lt 270 ]; then
  timeout $((340 - SECONDS)) python3 -m scripts.bench_attention --seqlens 4096 --head-dims 128 --regimes long \
    --methods adasplash ours --timing sustained --json $OUT/sustained_4k.json > $OUT/sustained_4k.log 2>&1
  echo "4k done at $SECONDS s (rc $?)"
fi
for f in $OUT/sustained_*.log; do echo "== $f"; grep -E "^\| (ours|adasplash)" $f | cut -d'|' -f2-8,15-17; done
