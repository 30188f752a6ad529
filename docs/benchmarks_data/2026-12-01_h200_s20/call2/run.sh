python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export TRITON_CACHE_DIR=$PWD/.cache/triton
mkdir -p $OUT/s20
timeout 430 python3 -m scripts.bench_attention --seqlens 32768 --head-dims 128 --regimes long --methods adasplash ours --timing sustained --json $OUT/s20/sus32k.json > $OUT/s20/sus32k.log 2>&1
tail -5 $OUT/s20/sus32k.log
timeout 150 python3 -m scripts.bench_attention --seqlens 8192 --head-dims 128 --regimes long --methods adasplash ours --timing sustained --json $OUT/s20/sus8k_a.json > $OUT/s20/sus8k_a.log 2>&1
tail -4 $OUT/s20/sus8k_a.log
