#!/usr/bin/env bash
# Eighteenth session, call 1: adasplash and ours, long regime, D 128 and 64 at 4k and 8k: sustained timing
# (first GPU run of --timing sustained), then graph timing in a second process, on main at $(git rev-parse HEAD).
set -o pipefail
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.cache/triton
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
git rev-parse HEAD > $OUT/commit.txt 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader > $OUT/card.txt
python3 -c "import torch, triton, adasplash; print(torch.__version__, triton.__version__, adasplash.__file__)" > $OUT/versions.txt 2>&1
for t in sustained graph; do
  timeout $((585 - SECONDS)) python3 -m scripts.bench_attention --seqlens 4096 8192 --head-dims 128 64 --regimes long \
    --methods adasplash ours --timing $t --json $OUT/${t}.json > $OUT/${t}.log 2>&1
  echo "$t done at $SECONDS s (rc $?)"
done
for t in sustained graph; do echo "== $t"; grep -E "^\| (ours|adasplash)" $OUT/${t}.log | cut -d'|' -f2-8,15-17; done
