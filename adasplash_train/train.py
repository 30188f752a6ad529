"""cfg -> instantiate -> Trainer.fit, with checkpointing and exact resume."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from adasplash_train.checkpoint import latest_checkpoint
from adasplash_train.module import LanguageModel

log = logging.getLogger(__name__)


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """`last` resumes from the run's latest checkpoint (it must exist), `auto` resumes when there is
    one and starts fresh otherwise, anything else is a checkpoint file. Starting fresh over a run
    that has checkpoints is refused, so no earlier work is overwritten by accident."""
    last = latest_checkpoint(run_dir)
    if ckpt_path in (None, "", "null", "none"):
        if last is not None:
            raise FileExistsError(
                f"{run_dir} already holds a run with checkpoints ({last}). Resume it with ckpt_path=last, "
                "or start a new one with run_name=<new name> (or delete that folder)."
            )
        return None
    if ckpt_path == "auto":
        return str(last) if last is not None else None
    if ckpt_path == "last":
        if last is None:
            raise FileNotFoundError(f"ckpt_path=last: no checkpoint in {run_dir / 'checkpoints'} yet; start the run "
                                    "first (ckpt_path=null) or check run_name / paths.run_dir")
        return str(last)
    if not Path(ckpt_path).exists():
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r} does not exist")
    return str(ckpt_path)


def resolve_precision(precision: str, accelerator: str) -> str:
    if precision != "auto":
        return precision
    on_gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    return "bf16-mixed" if on_gpu else "32-true"


def padded_vocab(vocab_size: int, multiple: int) -> int:
    # rows past the tokenizer's vocabulary are never targets; a multiple of 64 keeps the head matmul fast
    return multiple * math.ceil(vocab_size / multiple)


def build_model_config(cfg: DictConfig, vocab_size: int) -> dict[str, Any]:
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    pad_to = model_cfg.pop("pad_vocab_to_multiple", 64)
    model_cfg["vocab_size"] = padded_vocab(vocab_size, pad_to)
    model_cfg["attention"] = OmegaConf.to_container(cfg.attention, resolve=True)
    return model_cfg


def train(cfg: DictConfig, extra_callbacks: list[L.Callback] | None = None) -> dict[str, float]:
    """Train as configured and return the final metrics. `extra_callbacks` are added to the
    configured ones (programmatic use: notebooks, tests)."""
    run_dir = Path(cfg.paths.run_dir)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    L.seed_everything(cfg.seed, workers=True)

    with open_dict(cfg):
        cfg.num_train_samples = cfg.trainer.max_steps * cfg.batch_size * cfg.trainer.get("accumulate_grad_batches", 1)
    datamodule = hydra.utils.instantiate(cfg.data)
    tokenizer = datamodule.tokenizer

    module = LanguageModel(
        model_config=build_model_config(cfg, tokenizer.vocab_size),
        tokenizer_spec=tokenizer.spec(),
        max_steps=cfg.trainer.max_steps,
        compile=cfg.compile,
        stats_every_n_steps=cfg.stats_every_n_steps,
        **OmegaConf.to_container(cfg.optim, resolve=True),
    )
    log.info("model: %.2fM non-embedding parameters, %.3g training FLOPs/token, attention %s",
             module.model.num_params() / 1e6, module.model.flops_per_token(), dict(cfg.attention))

    loggers = [hydra.utils.instantiate(c) for c in (cfg.logger or {}).values() if c]
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.callbacks or {}).values() if c]
    callbacks += list(extra_callbacks or [])
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["precision"] = resolve_precision(str(trainer_cfg.get("precision", "auto")),
                                                 str(trainer_cfg.get("accelerator", "auto")))
    trainer: L.Trainer = hydra.utils.instantiate(trainer_cfg, logger=loggers or False, callbacks=callbacks)

    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    metrics["global_step"] = float(trainer.global_step)
    log.info("finished at step %d: %s", trainer.global_step,
             {k: round(v, 4) for k, v in metrics.items() if k.startswith(("val/", "train/"))})
    return metrics
