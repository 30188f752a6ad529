"""scripts/study.sh stage logic, with a stand-in for python (no training or evaluation runs)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "study.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_study(tmp_path, *stages, fail_task="ruler", **env_extra):
    fake = tmp_path / "fake_python"
    # records its arguments; fails for one evaluation task
    fake.write_text(f'#!/usr/bin/env bash\necho "$@" >> {tmp_path}/calls\n'
                    f'case "$*" in *"task={fail_task}"*) exit 1;; esac\nexit 0\n')
    fake.chmod(0o755)
    (tmp_path / "runs" / "study_entmax" / "checkpoints").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHON=str(fake), ADASPLASH_RUNS=str(tmp_path / "runs"),
               STUDY_NEEDLE_DEPTHS="[0,50,100]", STUDY_SYNTHETIC_SAMPLES="3", **env_extra)
    done = subprocess.run(["bash", str(SCRIPT), *stages], env=env, cwd=SCRIPT.parent.parent,
                          capture_output=True, text=True)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return done, calls


def test_a_failed_evaluation_leaves_no_marker_and_the_stage_fails(tmp_path):
    done, calls = run_study(tmp_path, "eval_entmax", "eval_softmax")
    assert done.returncode == 1 and "incomplete: eval_entmax" in done.stderr
    assert [c.split("task=")[1].split()[0] for c in calls] == ["niah", "ruler", "synthetic"]
    assert "niah.depths=[0,50,100]" in calls[0] and "synthetic.num_samples=3" in calls[2]
    assert "synthetic.filler=val" in calls[2]  # the run's own held-out split, never a silent fallback
    run = tmp_path / "runs" / "study_entmax"
    assert sorted(p.name for p in run.glob(".study_eval_*")) == [".study_eval_niah_done", ".study_eval_synthetic_done"]
    assert "skip eval of softmax" in done.stdout  # no checkpoints: nothing to evaluate, not a failure

    # the rerun repeats only the failed task
    (tmp_path / "calls").unlink()
    done, calls = run_study(tmp_path, "eval_entmax", fail_task="none")
    assert done.returncode == 0 and len(calls) == 1 and "task=ruler" in calls[0]


def test_seeds_train_and_evaluate_one_run_each(tmp_path):
    done, calls = run_study(tmp_path, "train_entmax", fail_task="none", STUDY_SEEDS="1337 7")
    assert done.returncode == 0
    assert [(c.split("seed=")[1].split()[0], c.split("run_name=")[1].split()[0]) for c in calls] == [
        ("1337", "study_entmax"), ("7", "study_entmax_seed7")]
    (tmp_path / "runs" / "study_entmax_seed7" / "checkpoints").mkdir(parents=True)
    (tmp_path / "calls").unlink()
    done, calls = run_study(tmp_path, "eval_entmax", "report", fail_task="none", STUDY_SEEDS="1337 7",
                            STUDY_METHODS="entmax", STUDY_REPORT=str(tmp_path / "r.md"))
    names = [c.split("name=")[1].split()[0] for c in calls if "-m evals " in c]
    assert names == ["entmax"] * 3 + ["entmax_seed7"] * 3
    report_call = next(c for c in calls if "evals.report" in c)
    assert f"runs=[{tmp_path}/runs/study_entmax,{tmp_path}/runs/study_entmax_seed7]" in report_call
