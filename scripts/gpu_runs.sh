#!/usr/bin/env bash
# The GPU runs behind docs/benchmarks.md (training throughput, kernel tests) and docs/report_8k.md
# (the 8k evaluation sweep). Run from the repository root on a CUDA machine; stages as arguments:
#   setup      offline GPU image: install carried wheels (.whl/), point tiktoken at the carried BPE file
#              and Triton's compile cache at .cache/triton (carry .cache; bring .cache/triton back in $OUT)
#   train8k    softmax_8k and entmax_8k (Triton) for $STEPS steps each, bf16, one GPU
#   track      entmax_8k with the Triton kernels vs the exact reference backend: the first steps' losses
#   eval8k     RULER + needle sweep over both 8k checkpoints at 4k/8k/16k, then the report
#   bench      scripts/bench_attention.py, one process per (N, D) (env BENCH_SEQLENS, BENCH_HEAD_DIMS,
#              BENCH_REGIMES, BENCH_METHODS, BENCH_TIMING, BENCH_TIMEOUT), then one table and plot under
#              $ADASPLASH_RUNS/bench (docs/benchmarks.md §1c: 32k at D 128 needs more than 300 s)
#   traffic    Nsight Compute's L2 and DRAM bytes per kernel of one warmed-up forward+backward call, ours
#              and adasplash (env TRAFFIC_SEQLENS, TRAFFIC_HEAD_DIM, TRAFFIC_REGIME, TRAFFIC_METHODS), as
#              one table under $ADASPLASH_RUNS/traffic (scripts/l2_traffic.py)
#   summary    tokens/s and final losses of every run under $ADASPLASH_RUNS as a markdown table
#   profile    Nsight Compute PC sampling of the entmax forward's threshold launch (8k, D 64, trained
#              inputs), its share of stall samples per pass (scripts/ncu_phases.py) under $ADASPLASH_RUNS/profile
# Source it (`. scripts/gpu_runs.sh setup`) so the environment set by `setup` stays.
set -eo pipefail

STEPS=${STEPS:-300}
export ADASPLASH_RUNS=${ADASPLASH_RUNS:-runs}
py=${PYTHON:-python}

setup() {
  if [ -d .whl ]; then
    "$py" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
  fi
  [ -d .cache/tiktoken ] && export TIKTOKEN_CACHE_DIR=$PWD/.cache/tiktoken
  # Compiled Triton kernels (ours, adasplash's autotuned ones) persist here: tar .cache/triton into $OUT
  # at the end of a call and unpack it locally, and the next fresh machine skips minutes of compiling.
  export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.cache/triton}
  [ -d .cache/haystack/PaulGrahamEssays ] && export ADASPLASH_HAYSTACK_DIR=$PWD/.cache/haystack/PaulGrahamEssays
  export ADASPLASH_CACHE=${ADASPLASH_CACHE:-/tmp/adasplash_cache}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$py" -c "import torch, triton, lightning; print('torch', torch.__version__, 'triton', triton.__version__, 'lightning', lightning.__version__)"
}

train8k() {
  for exp in softmax_8k entmax_8k; do
    "$py" -m adasplash_train experiment=$exp trainer.max_steps=$STEPS trainer.val_check_interval=$STEPS \
      checkpoint_every_n_steps=$STEPS callbacks.progress_bar=null ckpt_path=auto
  done
}

track() {
  # same seed, data and batch; only the entmax backend differs
  for backend in triton torch; do
    timeout 120 "$py" -m adasplash_train experiment=entmax_8k attention.backend=$backend run_name=track_$backend \
      batch_size=1 trainer.max_steps=6 trainer.log_every_n_steps=1 trainer.val_check_interval=6 \
      trainer.limit_val_batches=1 stats_every_n_steps=4 callbacks.progress_bar=null ckpt_path=auto
  done
}

eval8k() {
  "$py" -m evals -m ckpt=$ADASPLASH_RUNS/entmax_8k,$ADASPLASH_RUNS/softmax_8k task=ruler,niah \
    lengths=[4096,8192,16384] ruler.num_samples=${SAMPLES:-3} niah.samples_per_cell=1 \
    niah.depths=[0,25,50,75,100] batch_size=1 progress=false \
    results_file=$ADASPLASH_RUNS/eval8k_results.jsonl
  "$py" -m evals.report runs=[$ADASPLASH_RUNS/entmax_8k,$ADASPLASH_RUNS/softmax_8k] \
    results=[$ADASPLASH_RUNS/eval8k_results.jsonl] out=$ADASPLASH_RUNS/report_8k.md
}

bench() {
  # one process per (N, D) so that a slow case (compilation, autotuning) cannot take the others with
  # it; each under $BENCH_TIMEOUT seconds; then one table and plot from the saved rows
  local n d json files=()
  for d in ${BENCH_HEAD_DIMS:-64 128}; do
    for n in ${BENCH_SEQLENS:-4096 8192 16384 32768}; do
      json="$ADASPLASH_RUNS/bench/n${n}_d${d}.json"
      rm -f "$json"  # a case cut by the timeout writes no file; an older run's must not stand in for it
      timeout "${BENCH_TIMEOUT:-420}" "$py" -m scripts.bench_attention --seqlens "$n" --head-dims "$d" \
        --regimes ${BENCH_REGIMES:-trained long sparse} --methods ${BENCH_METHODS:-sdpa_flash sdpa_cudnn adasplash ours} \
        --timing "${BENCH_TIMING:-wall}" --json "$json" \
        || echo "bench N=$n D=$d: exit $?"
      [ -f "$json" ] && files+=("$json")
    done
  done
  if [ ${#files[@]} -eq 0 ]; then echo "bench: no case finished"; return 1; fi
  "$py" -m scripts.bench_attention --from-json "${files[@]}" --plot "$ADASPLASH_RUNS/bench/time_vs_n.png"
}

profile() {
  local dir="$ADASPLASH_RUNS/profile"
  mkdir -p "$dir"
  ncu --clock-control none --kernel-name regex:_entmax_attention_tau --launch-skip 3 --launch-count 1 \
    --section SourceCounters --import-source yes -f -o "$dir/fwd" \
    "$py" -m scripts.bench_attention --seqlens ${PROFILE_SEQLEN:-8192} --head-dims 64 --regimes trained --methods ours
  ncu -i "$dir/fwd.ncu-rep" --page source --csv --print-source cuda,sass > "$dir/fwd_source.csv"
  "$py" scripts/ncu_phases.py "$dir/fwd_source.csv" | tee "$dir/phases.md"
}

traffic() {
  local dir="$ADASPLASH_RUNS/traffic" n method report files=()
  mkdir -p "$dir"
  for n in ${TRAFFIC_SEQLENS:-8192}; do
    for method in ${TRAFFIC_METHODS:-ours adasplash}; do
      report="$dir/${method}_n${n}"
      ncu --profile-from-start off --clock-control none -f -o "$report" --metrics "$("$py" -m scripts.l2_traffic metrics)" \
        "$py" -m scripts.l2_traffic run --method "$method" --n "$n" --d "${TRAFFIC_HEAD_DIM:-128}" \
        --regime "${TRAFFIC_REGIME:-long}"
      ncu -i "$report.ncu-rep" --csv --page raw --print-units base > "$report.csv" && files+=("$report.csv")
    done
  done
  "$py" -m scripts.l2_traffic table "${files[@]}" | tee "$dir/table.md"
}

summary() {
  "$py" - "$ADASPLASH_RUNS" <<'PY'
import csv, glob, statistics, sys
from pathlib import Path
print("| run | steps | median tokens/s | median step ms | last train loss | last val loss | attn block sparsity |")
print("|---|---|---|---|---|---|---|")
for run in sorted(p for p in Path(sys.argv[1]).iterdir() if (p / "csv").is_dir()):
    rows = [r for f in sorted(glob.glob(f"{run}/csv/version_*/metrics.csv")) for r in csv.DictReader(open(f))]
    col = lambda k: [float(r[k]) for r in rows if r.get(k)]
    tps, ms = col("tokens_per_sec")[1:], col("step_time_ms")[1:]  # first logged step includes warm-up
    med = lambda xs: f"{statistics.median(xs):.0f}" if xs else "-"
    last = lambda xs: f"{xs[-1]:.3f}" if xs else "-"
    steps = max((int(r["step"]) for r in rows if r.get("step")), default=0) + 1
    print(f"| {run.name} | {steps} | {med(tps)} | {med(ms)} | {last(col('train/loss'))} | "
          f"{last(col('val/loss'))} | {last(col('attn/block_sparsity'))} |")
PY
}

for stage in "$@"; do
  echo "== $stage $(date +%T)"
  "$stage" || echo "== stage $stage FAILED"   # later stages still run (and say what they lack)
done
