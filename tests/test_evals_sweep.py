"""End to end: two tiny checkpoints (entmax, softmax) trained here, a Hydra multirun sweep of
`python -m evals` over checkpoints x tasks x lengths, lm-eval through the runner, one report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from adasplash_train.config import compose as compose_train
from adasplash_train.train import train
from evals.__main__ import CONFIG_DIR
from evals.report import SECTIONS, build_report, main as report_main, markdown_to_html
from evals.results import read_rows, run_label
from evals.runner import evaluate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for attention in ("entmax", "softmax"):
        cfg = compose_train("train", [
            "experiment=smoke", f"attention={attention}", f"run_name=tiny_{attention}", "model.max_seq_len=64",
            "batch_size=2", "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
            "checkpoint_every_n_steps=2", "optim.warmup_steps=1", "callbacks.progress_bar=null",
            "trainer.log_every_n_steps=1", f"paths.root_dir={root}", f"paths.cache_dir={root / 'cache'}",
            "data.source_args.max_docs=20", "data.val_fraction=0.1", "data.progress=false"])
        train(cfg)
        runs[attention] = root / f"tiny_{attention}"
    return runs


def eval_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="eval", overrides=overrides)


def test_sweep_then_report(checkpoints, tmp_path):
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "evals", "-m", f"ckpt={checkpoints['entmax']},{checkpoints['softmax']}",
        "task=ruler,niah,synthetic", "lengths=[300,700]", "ruler.tasks=[niah_single_1,niah_multikey_2,qa_1]",
        "ruler.num_samples=2", "ruler.tokens_to_generate=8", "niah.depths=[0,50,100]", "niah.samples_per_cell=1",
        "niah.tokens_to_generate=8", "niah.haystack=noise", "synthetic.num_samples=2", "synthetic.filler=val",
        f"synthetic.cache_dir={checkpoints['entmax'].parent / 'cache'}", "device=cpu", "progress=false",
        f"hydra.sweep.dir={sweep}",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "qa_1 skipped" in done.stdout + done.stderr  # no SQuAD file given

    # lm-eval through the same runner, appended to the sweep's results file
    results_file = sweep / "results.jsonl"
    cfg = eval_config([f"ckpt={checkpoints['entmax']}", "task=lm_eval", "lm_eval.limit=2", "device=cpu"])
    evaluate(cfg, output_dir=tmp_path / "lm_eval", results_file=results_file)

    rows = read_rows([sweep])
    ruler = [r for r in rows if r["task"] == "ruler"]
    # 2 checkpoints x 2 tasks x 2 lengths; 300 tokens cannot hold the prompt: error rows, 700 still ran
    assert len(ruler) == 8
    assert all(r["error"] and "longer length" in r["error"] for r in ruler if r["length"] == 300)
    assert all(r["error"] is None and 0 <= r["score"] <= 100 and r["beyond_training"] for r in ruler if r["length"] == 700)
    needle = [r for r in rows if r["task"] == "niah" and r["score"] is not None]
    assert sorted({r["depth"] for r in needle}) == [0, 50, 100] and {r["run"] for r in needle} == {"tiny_entmax", "tiny_softmax"}
    synthetic = [r for r in rows if r["task"] == "synthetic"]
    # 2 checkpoints x 3 tasks x 2 lengths x 2 metrics, filler from the runs' own held-out split
    assert len(synthetic) == 24 and all(r["error"] is None and r["filler"].startswith("val:stdlib-") for r in synthetic)
    assert {r["attention"] for r in rows} == {"entmax", "softmax"} and {r["train_length"] for r in rows} == {64}
    assert any(r["task"] == "lm_eval" and r["metric"] == "acc" for r in rows)
    assert list(sweep.glob("*/niah/tiny_*_needle.png")) and list(sweep.glob("*/niah/tiny_*_needle.csv"))
    predictions = [json.loads(line) for f in sweep.glob("*/predictions/*.jsonl") for line in f.read_text().splitlines()]
    assert predictions and all("prediction" in p and p["answers"] for p in predictions)

    out = tmp_path / "docs" / "report.md"
    report_main([f"runs=[{checkpoints['entmax']},{checkpoints['softmax']}]", f"results=[{sweep}]", f"out={out}",
                 "html=true"])
    text = out.read_text()
    for section in SECTIONS + ("Errors",):
        assert f"## {section}" in text, section
    assert "700†" in text and "| niah_single_1 |" in text and "| RULER avg | 700† |" in text
    assert "| kv_retrieval |" in text and "| synthetic avg | 700† |" in text
    assert (out.parent / "report_figures" / "loss_curves.png").stat().st_size > 0
    assert (out.parent / "report_figures" / "needle_heatmaps.png").stat().st_size > 0
    assert "<table>" in out.with_suffix(".html").read_text()


def test_eval_config_errors_are_explained(tmp_path):
    with pytest.raises(ValueError, match="ckpt is required"):
        evaluate(eval_config(["task=ruler"]), results_file=tmp_path / "r.jsonl")
    with pytest.raises(ValueError, match="task="):
        evaluate(eval_config(["task=poetry"]), model=object(), tokenizer=object())
    with pytest.raises(ValueError, match="lengths"):
        evaluate(eval_config(["task=ruler", "lengths=[]"]), model=object(), tokenizer=object())
    with pytest.raises(ValueError, match="unknown tasks"):
        evaluate(eval_config(["task=ruler", "ruler.tasks=[niah_single_9]"]), model=object(), tokenizer=object())


def test_report_arguments_and_html(tmp_path):
    with pytest.raises(SystemExit, match="nothing to report"):
        report_main([f"out={tmp_path / 'r.md'}"])
    with pytest.raises(SystemExit, match="unknown argument"):
        report_main(["runz=[a]"])
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        build_report([tmp_path], [], tmp_path / "r.md")
    page = markdown_to_html("# T\n\n| a | b |\n|---|---|\n| 1 | **2** |\n\n![x](f.png)\n", "T")
    assert "<h1>T</h1>" in page and "<td><b>2</b></td>" in page and '<img alt="x" src="f.png">' in page


def test_report_from_hand_made_rows(tmp_path):
    def row(run, attention, task, length, score, **extra):
        return {"run": run, "attention": attention, "train_length": 1024, "task": task, "subtask": extra.pop("subtask", "t"),
                "length": length, "score": score, "error": None, **extra}

    rows = [row("e", "entmax", "ruler", 1024, 80.0), row("e", "entmax", "ruler", 2048, 40.0),
            row("s", "softmax", "ruler", 1024, 60.0), row("s", "softmax", "ruler", 2048, 50.0),
            row("e", "entmax", "niah", 2048, 100.0, depth=50.0), row("s", "softmax", "niah", 2048, 0.0, depth=50.0),
            {"run": "broken", "ckpt": "x", "task": "ruler", "subtask": None, "length": None, "score": None,
             "error": "FileNotFoundError: no checkpoint"}]
    results_file = tmp_path / "results.jsonl"
    results_file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    text = build_report([], [results_file], tmp_path / "r.md").read_text()
    assert "| RULER avg | 1024 | 80.0 | 60.0 | +20.0 |" in text
    assert "| RULER avg | 2048† | 40.0 | 50.0 | -10.0 |" in text
    assert "| needle avg | 2048† | 100.0 | 0.0 | +100.0 |" in text
    assert "| broken | ruler | None | None | FileNotFoundError: no checkpoint |" in text


def test_run_labels():
    assert run_label("runs/entmax_8k/checkpoints/last.ckpt") == "entmax_8k"
    assert run_label("runs/entmax_8k") == "entmax_8k"
    assert run_label("model.ckpt") == "model"
    assert run_label("runs/x", name="mine") == "mine"


def test_ruler_average_needs_every_task_at_that_length():
    from evals.report import ruler_average

    rows = [{"task": "ruler", "subtask": t, "length": n, "score": s}
            for t, n, s in [("vt", 4096, 50.0), ("cwe", 4096, 10.0), ("vt", 8192, 40.0), ("cwe", 8192, None)]]
    assert ruler_average(rows, 4096) == 30.0
    assert ruler_average(rows, 8192) is None  # cwe failed at 8k: no average over a different task set
    assert ruler_average(rows, 4096, tasks={"vt", "cwe", "fwe"}) is None  # another run also ran fwe


def test_runs_that_ran_fewer_ruler_tasks_get_no_average(tmp_path):
    """A run cut short after some RULER tasks is not compared with one that ran them all."""
    rows = [{"run": run, "attention": attention, "train_length": 4096, "task": "ruler", "subtask": task,
             "length": 4096, "score": score, "error": None}
            for run, attention, task, score in [("s", "softmax", "vt", 10.0), ("s", "softmax", "cwe", 30.0),
                                                ("e", "entmax", "vt", 50.0)]]
    results_file = tmp_path / "results.jsonl"
    results_file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    text = build_report([], [results_file], tmp_path / "r.md").read_text()
    assert "| **average** | 20.0 |" in text and "| **average** | – |" in text
    assert "| RULER avg |" not in text


def test_training_log_orders_launches_numerically_and_drops_superseded_steps(tmp_path):
    from evals.report import load_training_log

    def write(version, steps):
        folder = tmp_path / "csv" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text("step,train/loss\n" + "".join(f"{s},{version}.0\n" for s in steps))

    write(2, range(0, 10))    # an earlier launch that crashed after step 9
    write(10, range(5, 13))   # a later launch (version_10 sorts before version_2 as text) resumed at step 5
    frame = load_training_log(tmp_path)
    assert list(frame["step"]) == list(range(13))
    assert list(frame["train/loss"]) == [2.0] * 5 + [10.0] * 8


def test_throughput_and_layer_sparsity_from_a_hand_made_log(tmp_path):
    run = tmp_path / "entmax_run" / "csv" / "version_0"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text(
        "step,tokens_per_sec,step_time_ms,peak_mem_gib,attn/block_sparsity,attn/block_sparsity_layer0,"
        "attn/block_sparsity_layer1,train/loss,val/loss\n"
        "0,100,10.0,1.5,0.4,0.5,0.2,5.0,\n"
        "1,300,30.0,2.5,0.3,0.25,0.35,4.0,\n"
        "2,200,20.0,2.0,,,,3.0,3.5\n")
    text = build_report([tmp_path / "entmax_run"], [], tmp_path / "r.md").read_text()
    # median tokens/s and step ms, max peak memory, last logged sparsity (not the largest), last train
    # loss, best val loss
    assert "| entmax_run | 200 | 20.0 | 2.50 | 0.300 | 2 | 3.000 | 3.500 |" in text
    assert "| run | statistic | layer 0 | layer 1 |" in text
    assert "| entmax_run | block_sparsity | 0.250 | 0.350 |" in text
