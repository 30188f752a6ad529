#!/usr/bin/env bash
# The comparison study behind docs/results.md: the same small GPT trained with softmax (FlashAttention-2),
# entmax (alpha = 1.5, our Triton kernels) and, where available, hierarchical attention, on the same
# data, tokens and seed; then RULER, needle grids and the in-distribution synthetic tasks (task=synthetic)
# at 1x, 2x and 4x the training length; then one report.
#
# Usage: scripts/study.sh [STAGE ...]      (default: every stage, in order)
#   stages: train_<method>, eval_<method>, report     methods: $STUDY_METHODS (softmax entmax hierarchical)
# Every stage is resumable and fits in 10 minutes on one H100 at the default sizes, so the study can
# run in pieces: training resumes from its last checkpoint (ckpt_path=auto), an evaluation that has
# finished leaves a marker and is skipped when run again.
# Environment: STUDY_STEPS (training steps, default 1000), STUDY_LENGTHS (default [4096,8192,16384]),
# STUDY_SAMPLES (RULER samples per task and length, default 10), STUDY_NEEDLE_SAMPLES (needle samples
# per length x depth cell, default 2), STUDY_NEEDLE_DEPTHS (default: the eval config's 11 depths,
# e.g. [0,25,50,75,100]), STUDY_SYNTHETIC_SAMPLES (synthetic samples per task and length, default 20),
# STUDY_SEEDS (training seeds, default 1337, the experiment's; e.g. "1337 1 2": each method is trained and
# evaluated once per seed, runs/study_<method> for 1337 and runs/study_<method>_seed<S> for the others;
# the report's entmax - softmax table averages over seeds), ADASPLASH_RUNS (default runs),
# STUDY_REPORT (default docs/results.md).
set -euo pipefail

steps=${STUDY_STEPS:-1000}
lengths=${STUDY_LENGTHS:-[4096,8192,16384]}
samples=${STUDY_SAMPLES:-10}
needle_samples=${STUDY_NEEDLE_SAMPLES:-2}
# an array, so that a depth list is one argument (no word splitting, no [..] glob matching files)
needle_depths=()
[ -n "${STUDY_NEEDLE_DEPTHS:-}" ] && needle_depths=("niah.depths=$STUDY_NEEDLE_DEPTHS")
synthetic_samples=${STUDY_SYNTHETIC_SAMPLES:-20}
seeds=${STUDY_SEEDS:-1337}
root=${ADASPLASH_RUNS:-runs}
methods=${STUDY_METHODS:-softmax entmax hierarchical}
report=${STUDY_REPORT:-docs/results.md}
results="$root/study_results.jsonl"
python=${PYTHON:-python}

have_attention() { [ -f "configs/attention/$1.yaml" ]; }

# label of one (method, seed) run; its folder is $root/study_<label>
label() { if [ "$2" = 1337 ]; then echo "$1"; else echo "$1_seed$2"; fi; }

train() {
  have_attention "$1" || { echo "skip train_$1: no configs/attention/$1.yaml"; return 0; }
  local seed
  for seed in $seeds; do
    "$python" -m adasplash_train experiment=study attention="$1" seed="$seed" run_name="study_$(label "$1" "$seed")" \
      trainer.max_steps="$steps" ckpt_path=auto
  done
}

evaluate() {
  local seed failed=0
  for seed in $seeds; do evaluate_run "$(label "$1" "$seed")" || failed=1; done
  return "$failed"
}

# synthetic.filler=val: the synthetic tasks must use the run's own held-out split (the token cache
# that training wrote, under ADASPLASH_CACHE); without it the evaluation fails instead of silently
# switching to the essay haystack, which is a different task.
evaluate_run() {
  local run="$root/study_$1" task failed=0
  [ -d "$run/checkpoints" ] || { echo "skip eval of $1: $run has no checkpoints"; return 0; }
  for task in niah ruler synthetic; do
    local marker="$run/.study_eval_${task}_done"
    [ -f "$marker" ] && { echo "eval of $1, $task: done before"; continue; }
    "$python" -m evals ckpt="$run" name="$1" task="$task" lengths="$lengths" \
      ruler.num_samples="$samples" niah.samples_per_cell="$needle_samples" ${needle_depths[@]+"${needle_depths[@]}"} \
      synthetic.num_samples="$synthetic_samples" synthetic.filler=val batch_size=1 progress=false \
      results_file="$results" && touch "$marker" \
      || { echo "eval of $1, $task failed (no marker: it runs again next time); the other tasks go on" >&2; failed=1; }
  done
  return "$failed"
}

make_report() {
  local runs=() m seed
  for m in $methods; do
    for seed in $seeds; do
      [ -d "$root/study_$(label "$m" "$seed")" ] && runs+=("$root/study_$(label "$m" "$seed")")
    done
  done
  local joined
  joined=$(IFS=,; echo "${runs[*]}")
  "$python" -m evals.report runs="[$joined]" results="[$results]" out="$report"
  {
    echo
    echo "## How this was produced"
    echo
    echo "- card: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || echo 'no GPU')"
    echo "- versions: $("$python" -c 'import torch, triton, lightning; print(f"torch {torch.__version__}, triton {triton.__version__}, lightning {lightning.__version__}")')"
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- command: \`STUDY_STEPS=$steps STUDY_LENGTHS=$lengths STUDY_SAMPLES=$samples STUDY_NEEDLE_SAMPLES=$needle_samples${STUDY_NEEDLE_DEPTHS:+ STUDY_NEEDLE_DEPTHS=$STUDY_NEEDLE_DEPTHS} STUDY_SYNTHETIC_SAMPLES=$synthetic_samples STUDY_SEEDS=\"$seeds\" STUDY_METHODS=\"$methods\" scripts/study.sh\`"
    echo "- training: \`python -m adasplash_train experiment=study attention=<method> seed=<seed> run_name=study_<method>[_seed<seed>] trainer.max_steps=$steps ckpt_path=auto\`"
    echo "- evaluation: \`python -m evals ckpt=$root/study_<method>[_seed<seed>] task=niah|ruler|synthetic lengths=$lengths ruler.num_samples=$samples niah.samples_per_cell=$needle_samples${STUDY_NEEDLE_DEPTHS:+ niah.depths=$STUDY_NEEDLE_DEPTHS} synthetic.num_samples=$synthetic_samples synthetic.filler=val batch_size=1\`"
  } >> "$report"
}

stages=("$@")
if [ ${#stages[@]} -eq 0 ]; then
  for m in $methods; do stages+=("train_$m"); done
  for m in $methods; do stages+=("eval_$m"); done
  stages+=(report)
fi
failed_stages=()
for stage in "${stages[@]}"; do
  echo "== $stage"
  case "$stage" in
    train_*) train "${stage#train_}" ;;
    eval_*) evaluate "${stage#eval_}" || failed_stages+=("$stage") ;;
    report) make_report ;;
    *) echo "unknown stage $stage (train_<method>, eval_<method>, report)" >&2; exit 2 ;;
  esac
done
if [ ${#failed_stages[@]} -gt 0 ]; then
  echo "incomplete: ${failed_stages[*]} (rerun them; finished evaluations are skipped)" >&2
  exit 1
fi
