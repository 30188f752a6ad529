set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export TRITON_CACHE_DIR=$PWD/.cache/triton
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
timeout 560 python3 -m scripts.ab_kernels --tool kernel_times --compile-first --variants .cache/ab31/main .cache/ab31/stop \
  --rounds 2 --out $OUT/ab31 -- --seqlens 4096 8192 16384 --head-dims 128 --regimes long 2>&1 | tail -40
