"""The training framework end to end on the CPU: configs compose, every experiment runs a fast_dev_run,
loss falls, resume continues the same run, load_model rebuilds the model, bad configs fail clearly."""

import csv
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import open_dict

from adasplash_train.checkpoint import latest_checkpoint, load_model
from adasplash_train.config import CONFIG_DIR, compose
from adasplash_train.module import LanguageModel
from adasplash_train.train import train

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def small_overrides(tmp_path: Path, cache_dir: Path) -> list[str]:
    # a small slice of the embedded corpus keeps tokenisation out of the test's time
    return [f"paths.root_dir={tmp_path}", f"paths.cache_dir={cache_dir}", "data.source_args.max_docs=40", "data.val_fraction=0.1", "data.progress=false"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("token_cache")


def run(overrides, extra_callbacks=None):
    cfg = compose("train", overrides)
    return cfg, train(cfg, extra_callbacks)


class CrashInSetup(L.Callback):
    """Simulates a failure before training starts (data preparation, a requeue during setup)."""

    def setup(self, trainer, pl_module, stage):
        raise RuntimeError("simulated setup failure")


class CrashAtStep(L.Callback):
    """Simulates a crash (node failure, preemption) right after optimizer step `step`."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_runs_fast_dev_run(experiment, tmp_path, cache_dir):
    cfg = compose("train", [f"experiment={experiment}"])
    assert cfg.trainer.max_steps > 0 and cfg.model.max_seq_len >= 256
    _, metrics = run([f"experiment={experiment}", "debug=cpu_small", "trainer.fast_dev_run=true"]
                     + small_overrides(tmp_path, cache_dir))
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_main_job_default_composes():
    cfg = compose("train")
    assert cfg.attention.name in ("entmax", "softmax") and cfg.data is not None


def train_small(tmp_path, cache_dir, steps, extra=(), extra_callbacks=None):
    overrides = ["experiment=smoke", "model.max_seq_len=64", "batch_size=4", f"trainer.max_steps={steps}",
                 "trainer.val_check_interval=4", "trainer.limit_val_batches=2", "checkpoint_every_n_steps=4",
                 "optim.warmup_steps=2", "trainer.log_every_n_steps=1", "callbacks.progress_bar=null", *small_overrides(tmp_path, cache_dir), *extra]
    return run(overrides, extra_callbacks)


@pytest.mark.parametrize("crash_at", [4, 6])
def test_resume_continues_the_same_run(tmp_path, cache_dir, crash_at):
    # uninterrupted: 8 steps; interrupted: a crash after step 4 (a periodic checkpoint exists) or 6
    # (only the on-exception checkpoint has it), then ckpt_path=last resumes to step 8
    _, full = train_small(tmp_path / "a", cache_dir, 8)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_small(tmp_path / "b", cache_dir, 8, extra_callbacks=[CrashAtStep(crash_at)])
    # a failure before training starts (here: while resuming) leaves no step-0 checkpoint behind
    # that the next resume would take for the newest
    with pytest.raises(RuntimeError, match="simulated setup failure"):
        train_small(tmp_path / "b", cache_dir, 8, ["ckpt_path=last"], extra_callbacks=[CrashInSetup()])
    newest = latest_checkpoint(tmp_path / "b" / "smoke")
    assert torch.load(newest, map_location="cpu", weights_only=False)["global_step"] == crash_at
    cfg, resumed = train_small(tmp_path / "b", cache_dir, 8, ["ckpt_path=last"])
    assert resumed["global_step"] == 8
    assert resumed["train/loss"] == pytest.approx(full["train/loss"], rel=1e-4, abs=1e-5)
    assert resumed["val/loss"] == pytest.approx(full["val/loss"], rel=1e-4, abs=1e-5)
    # resuming a finished run trains nothing and says so
    _, again = train_small(tmp_path / "b", cache_dir, 8, ["ckpt_path=last"])
    assert again == {"global_step": 8.0}
    # both launches kept their metrics (a new CSV version per launch)
    csvs = sorted((Path(cfg.paths.run_dir) / "csv").glob("version_*/metrics.csv"))
    assert len(csvs) == 2


def test_fresh_start_over_existing_run_is_refused_and_last_needs_a_run(tmp_path, cache_dir):
    with pytest.raises(FileNotFoundError, match="ckpt_path=last"):
        train_small(tmp_path, cache_dir, 2, ["ckpt_path=last"])
    train_small(tmp_path, cache_dir, 2)
    with pytest.raises(FileExistsError, match="ckpt_path=last"):
        train_small(tmp_path, cache_dir, 2)


def test_smoke_loss_falls_and_load_model_rebuilds_it(tmp_path, cache_dir):
    cfg, metrics = train_small(tmp_path, cache_dir, 40, ["trainer.val_check_interval=20", "trainer.limit_val_batches=4"])
    run_dir = Path(cfg.paths.run_dir)
    with next((run_dir / "csv").glob("version_*/metrics.csv")).open() as f:
        rows = list(csv.DictReader(f))
    train_losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    val_losses = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(val_losses) == 2 and "tokens_per_sec" in rows[0]
    # a byte-level model starts near uniform, ln(vocab) = 5.8; after 40 steps it is well below
    assert train_losses[0] > 5.0
    assert val_losses[-1] < val_losses[0] < train_losses[0] - 1.0
    assert metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/loss"]), rel=1e-5)
    assert (run_dir / "checkpoints" / "last.ckpt").exists()

    # Lightning's own loader works too (no trainer attached while the checkpoint hooks run)
    restored = LanguageModel.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    assert restored.model.config.max_seq_len == 64

    model, tokenizer = load_model(run_dir, device="cpu")
    assert not model.training and model.config.attention["name"] == "entmax"
    ids = torch.tensor([tokenizer.encode("def main():\n    return 0\n")])
    with torch.no_grad():
        logits, loss = model(ids[:, :-1], targets=ids[:, 1:])
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(loss)


def test_config_typos_give_hydra_errors():
    with pytest.raises(ConfigCompositionException, match="Could not override 'trainer.max_stepz'"):
        compose("train", ["trainer.max_stepz=3"])
    with pytest.raises(ConfigCompositionException, match="experiment"):
        compose("train", ["experiment=nonexistent"])
    with pytest.raises(ConfigCompositionException, match="attention"):
        compose("train", ["attention=nope"])


def test_bad_model_and_attention_config_fail_before_training(tmp_path, cache_dir):
    base = ["experiment=smoke", *small_overrides(tmp_path, cache_dir)]
    with pytest.raises(ValueError, match=r"attention.alpha=3.0 must be in \(1, 2\]"):
        run(base + ["attention.alpha=3.0"])
    with pytest.raises(ValueError, match="n_kv_head"):
        run(base + ["model.n_kv_head=3"])
    cfg = compose("train", base)
    with open_dict(cfg):
        cfg.attention.name = "linear"
    with pytest.raises(ValueError, match="unknown attention.name='linear'"):
        train(cfg)
