python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export TRITON_CACHE_DIR=$PWD/.cache/triton
mkdir -p $OUT/s20
timeout 575 python3 -u -m scripts.bench_attention --seqlens 32768 --head-dims 128 --regimes long --methods adasplash ours --timing sustained --json $OUT/s20/sus32k.json > $OUT/s20/sus32k.log 2>&1
tail -4 $OUT/s20/sus32k.log
