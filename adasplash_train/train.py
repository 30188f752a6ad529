"""cfg -> instantiate -> Trainer.fit, with checkpointing and exact resume."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.callbacks import OnExceptionCheckpoint
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from adasplash_train.checkpoint import latest_checkpoint
from adasplash_train.module import LanguageModel

log = logging.getLogger(__name__)
# every rank runs this file; only global rank 0 (known from the launcher's environment) says so
log_rank_zero = rank_zero_only(log.info)


def newest_resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest of checkpoints/last.ckpt, checkpoints/interrupted.ckpt and the checkpoints that
    Lightning's SLURM auto-requeue writes into the run folder on the requeue signal (hpc_ckpt_<n>.ckpt)."""
    found = list(run_dir.glob("hpc_ckpt_*.ckpt")) if run_dir.is_dir() else []
    last = latest_checkpoint(run_dir)
    found += [last] if last is not None else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


class ExceptionCheckpoint(OnExceptionCheckpoint):
    """OnExceptionCheckpoint that never waits for other ranks. Lightning's version ends in a barrier;
    when one rank fails, the others are inside a gradient all-reduce, so the failed rank would wait in
    that barrier until the collective timeout instead of exiting (which is what lets torchrun or
    Lightning's launcher stop the job). Here, with several processes, rank 0 writes the checkpoint
    on its own (DDP: it holds the whole model) and no rank waits; a sharded FSDP checkpoint needs
    every rank, so there the newest periodic checkpoint is the resume point.

    Nothing is written for an exception raised before training started (data preparation, setup,
    checkpoint restore): the weights then are fresh ones, and a step-0 `interrupted.ckpt` newer than
    `last.ckpt` would make the next resume silently start over."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._training_started = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training_started = True

    def on_exception(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if not self._training_started:
            return
        if trainer.world_size == 1:
            return super().on_exception(trainer, *args, **kwargs)
        if isinstance(trainer.strategy, FSDPStrategy):
            log.warning("rank %d stopped on an exception; FSDP cannot save without every rank, so resume "
                        "from the newest periodic checkpoint", trainer.global_rank)
            return
        if trainer.is_global_zero:
            checkpoint = trainer._checkpoint_connector.dump_checkpoint()
            trainer.strategy.save_checkpoint(checkpoint, self.ckpt_path)


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """`last` resumes from the run's latest checkpoint (it must exist), `auto` resumes when there is
    one and starts fresh otherwise, anything else is a checkpoint file. Starting fresh over a run
    that has checkpoints is refused, so no earlier work is overwritten by accident."""
    last = newest_resume_checkpoint(run_dir)
    if ckpt_path in (None, "", "null", "none"):
        if last is not None:
            raise FileExistsError(
                f"{run_dir} already holds a run with checkpoints ({last}). Resume it with ckpt_path=last "
                "(cluster jobs that may be requeued: ckpt_path=auto), or start a new one with "
                "run_name=<new name> (or delete that folder)."
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


def resolve_devices(trainer_cfg: dict) -> dict:
    """`devices: auto` under torchrun or srun means one process per task the launcher started:
    Lightning then needs devices x num_nodes to equal the launcher's world size, and on a machine
    with more GPUs than tasks (or on CPUs) its own `auto` would count something else."""
    if trainer_cfg.get("devices") != "auto":
        return trainer_cfg
    env = os.environ
    if TorchElasticEnvironment.detect():  # checked first, as Lightning does: torchrun may run inside SLURM
        per_node = int(env["LOCAL_WORLD_SIZE"])
        nodes = int(env["WORLD_SIZE"]) // per_node
    elif SLURMEnvironment.detect() and "SLURM_NTASKS_PER_NODE" in env:
        per_node = int(env["SLURM_NTASKS_PER_NODE"].split("(")[0])   # "8" or "8(x2)"
        nodes = int(env.get("SLURM_NNODES", "1"))
    else:
        return trainer_cfg
    return {**trainer_cfg, "devices": per_node, "num_nodes": nodes}


def fsdp_bf16_mixed_precision():
    """bf16 compute with gradients averaged across ranks in fp32 and buffers kept in fp32. Lightning's
    own bf16 policy for FSDP casts both to bf16, and the gradient reduction would lose precision."""
    from torch.distributed.fsdp import MixedPrecision

    return MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, buffer_dtype=torch.float32)


def build_strategy(strategy_cfg, precision: str):
    """The configured strategy: a name ("auto", "ddp") as it is, a `_target_` dict instantiated."""
    if not isinstance(strategy_cfg, dict):
        return strategy_cfg
    extra = {}
    if (strategy_cfg.get("_target_", "").endswith("FSDPStrategy") and precision == "bf16-mixed"
            and not strategy_cfg.get("mixed_precision")):
        extra["mixed_precision"] = fsdp_bf16_mixed_precision()
    return hydra.utils.instantiate(strategy_cfg, **extra)


def accumulation_for_global_batch(global_batch_tokens: int | None, seq_len: int, batch_size: int,
                                  world_size: int, accumulate_grad_batches: int) -> int:
    """Micro-batches per optimizer step. With `global_batch_tokens` set, an optimizer step always sees
    that many tokens whatever the number of devices, so the run (and its step-based LR schedule) is
    the same on 1 GPU or 64: accumulate = global_batch_tokens / (seq_len x batch_size x world_size)."""
    if global_batch_tokens is None:
        return accumulate_grad_batches
    if isinstance(global_batch_tokens, bool) or not isinstance(global_batch_tokens, int) or global_batch_tokens < 1:
        raise ValueError(f"global_batch_tokens must be a positive integer or null, got {global_batch_tokens!r}")
    tokens_per_micro_step = seq_len * batch_size * world_size
    if global_batch_tokens % tokens_per_micro_step:
        raise ValueError(
            f"global_batch_tokens={global_batch_tokens} is not a multiple of seq_len x batch_size x world_size = "
            f"{seq_len} x {batch_size} x {world_size} = {tokens_per_micro_step}: set global_batch_tokens to a "
            f"multiple of {tokens_per_micro_step}, or change batch_size (per device) or the number of devices."
        )
    accumulate = global_batch_tokens // tokens_per_micro_step
    if accumulate_grad_batches not in (1, accumulate):
        raise ValueError(
            f"global_batch_tokens={global_batch_tokens} asks for accumulate_grad_batches={accumulate}, but "
            f"trainer.accumulate_grad_batches={accumulate_grad_batches} is set too: set only one of them."
        )
    return accumulate


def padded_vocab(vocab_size: int, multiple: int) -> int:
    # rows past the tokenizer's vocabulary are never targets; a multiple of 64 keeps the head matmul fast
    return multiple * math.ceil(vocab_size / multiple)


def build_model_config(cfg: DictConfig, vocab_size: int) -> dict[str, Any]:
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    pad_to = model_cfg.pop("pad_vocab_to_multiple", 64)
    model_cfg["vocab_size"] = padded_vocab(vocab_size, pad_to)
    model_cfg["attention"] = OmegaConf.to_container(cfg.attention, resolve=True)
    return model_cfg


def finished_step(ckpt_path: str | None, max_steps: int) -> int | None:
    """The checkpoint's step when it has already reached max_steps (resuming would train nothing), else None."""
    if not ckpt_path or not Path(ckpt_path).is_file():  # a sharded FSDP folder: let Lightning decide
        return None
    step = int(torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=False).get("global_step", 0))
    return step if max_steps >= 0 and step >= max_steps else None


def train(cfg: DictConfig, extra_callbacks: list[L.Callback] | None = None) -> dict[str, float]:
    """Train as configured and return the final metrics. `extra_callbacks` are added to the
    configured ones (programmatic use: notebooks, tests)."""
    run_dir = Path(cfg.paths.run_dir)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    done = finished_step(ckpt_path, cfg.trainer.max_steps)
    if done is not None:
        log_rank_zero(f"{ckpt_path} is already at step {done} >= trainer.max_steps={cfg.trainer.max_steps}: "
                      "nothing to train (raise trainer.max_steps to continue the run)")
        return {"global_step": float(done)}
    L.seed_everything(cfg.seed, workers=True)

    # the trainer comes first: the global batch depends on the world size Lightning resolves
    loggers = [hydra.utils.instantiate(c) for c in (cfg.logger or {}).values() if c]
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.callbacks or {}).values() if c]
    callbacks += list(extra_callbacks or [])
    trainer_cfg = resolve_devices(OmegaConf.to_container(cfg.trainer, resolve=True))
    trainer_cfg["precision"] = resolve_precision(str(trainer_cfg.get("precision", "auto")),
                                                 str(trainer_cfg.get("accelerator", "auto")))
    strategy = build_strategy(trainer_cfg.pop("strategy", "auto"), trainer_cfg["precision"])
    trainer: L.Trainer = hydra.utils.instantiate(trainer_cfg, strategy=strategy, logger=loggers or False,
                                                 callbacks=callbacks)
    # an attribute the fit loop reads at every batch; known only now that the world size is
    trainer.accumulate_grad_batches = accumulation_for_global_batch(
        cfg.get("global_batch_tokens"), cfg.data.seq_len, cfg.batch_size, trainer.world_size,
        trainer_cfg.get("accumulate_grad_batches", 1))
    # Lightning counts val_check_interval in micro-batches; the configs mean optimizer steps
    if isinstance(trainer.val_check_interval, int):
        trainer.val_check_interval *= trainer.accumulate_grad_batches

    with open_dict(cfg):
        cfg.num_train_samples = (cfg.trainer.max_steps * cfg.batch_size * trainer.accumulate_grad_batches
                                 * trainer.world_size)
    log_rank_zero("global batch: %d sequences of %d tokens (%d per device x %d accumulated x %d devices), "
                  "%d optimizer steps", cfg.batch_size * trainer.accumulate_grad_batches * trainer.world_size,
                  cfg.data.seq_len, cfg.batch_size, trainer.accumulate_grad_batches, trainer.world_size,
                  cfg.trainer.max_steps)
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
    log_rank_zero("model: %.2fM non-embedding parameters, %.3g training FLOPs/token, attention %s",
                  module.model.num_params() / 1e6, module.model.flops_per_token(), dict(cfg.attention))

    if ckpt_path:
        log_rank_zero("resuming from %s", ckpt_path)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    metrics["global_step"] = float(trainer.global_step)
    log_rank_zero("finished at step %d: %s", trainer.global_step,
             {k: round(v, 4) for k, v in metrics.items() if k.startswith(("val/", "train/"))})
    return metrics
