#!/usr/bin/env bash
# Device call 2 (session 15): main 9b84819 (exp/own-lists landed: four launches per forward+backward).
#  1. the full GPU kernel suite;  2. D 128 at 4k and 8k long (graph) against adasplash; 3. D 64 4k long (graph).
# carry [".cache/s16run2.sh", ".whl"]
set -o pipefail
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.cache/triton
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $OUT/card.txt
python3 -c "import torch, triton, adasplash; print(torch.__version__, triton.__version__)" > $OUT/versions.txt 2>&1
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_kernel_gpu.py > $OUT/gpu_suite.log 2>&1; echo suite rc=$? $SECONDS; tail -3 $OUT/gpu_suite.log
B="python3 -m scripts.bench_attention"
timeout $((570 - SECONDS)) $B --seqlens 4096 8192 --head-dims 128 --regimes long --methods adasplash ours --timing graph --json $OUT/graph_d128.json > $OUT/graph_d128.log 2>&1; echo s2 $SECONDS
grep -hE "ms" $OUT/graph_d128.log | cut -c1-150 | tail -8
