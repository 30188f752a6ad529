"""LightningModule: loss, optimizer groups, warmup + cosine schedule, metrics."""

from __future__ import annotations

import math
import random
import time
from typing import Any

import lightning as L
import numpy as np
import torch

from adasplash_train.model import GPT, GPTConfig


def warmup_cosine(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate multiplier: linear warmup from 0, then cosine decay to min_lr_ratio at max_steps."""
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LanguageModel(L.LightningModule):
    def __init__(
        self,
        model_config: dict[str, Any],
        tokenizer_spec: dict[str, Any] | None = None,
        lr: float = 3e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        max_steps: int = 1000,
        min_lr_ratio: float = 0.1,
        compile: bool = False,
        stats_every_n_steps: int = 50,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = GPT(GPTConfig(**model_config))
        self._step_started: float | None = None
        self._compiled = False

    def configure_model(self):
        # nn.Module.compile() compiles in place, so state_dict keys stay those of the plain model
        if self.hparams.compile and not self._compiled:
            self.model.compile()
            self._compiled = True

    # --------------------------------------------------------------- steps

    def forward(self, input_ids, targets=None, doc_ids=None):
        return self.model(input_ids, targets=targets, doc_ids=doc_ids)

    def training_step(self, batch, batch_idx):
        collect = self.hparams.stats_every_n_steps > 0 and self.global_step % self.hparams.stats_every_n_steps == 0
        self.model.set_collect_attention_stats(collect)
        _, loss = self(batch["input_ids"], batch["targets"], batch.get("doc_ids"))
        # the mean over ranks (one scalar all-reduce), not rank 0's share of the batch
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, sync_dist=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        if collect:
            self._log_attention_stats()
            self.model.set_collect_attention_stats(False)
        return loss

    def validation_step(self, batch, batch_idx):
        _, loss = self(batch["input_ids"], batch["targets"], batch.get("doc_ids"))
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, sync_dist=True)
        return loss

    def on_validation_epoch_end(self):
        # perplexity of the mean loss (not the mean of per-batch perplexities, which depends on batching)
        mean_loss = self.trainer.callback_metrics.get("val/loss")
        if mean_loss is not None:
            self.log("val/ppl", torch.exp(mean_loss.float()))

    def _log_attention_stats(self):
        per_layer = [s for s in self.model.attention_stats() if s]
        if not per_layer:
            return
        for key in per_layer[0]:
            values = [s[key] for s in per_layer if key in s]
            # every rank collects on the same steps, so these all-reduces line up across ranks
            self.log(f"attn/{key}", float(np.mean(values)), on_step=True, on_epoch=False, sync_dist=True)
            for layer, value in enumerate(values):
                self.log(f"attn/{key}_layer{layer}", float(value), on_step=True, on_epoch=False, sync_dist=True)

    # tokens/s over the whole optimizer step (data wait and every accumulated micro-batch included),
    # measured between the starts of consecutive optimizer steps, for all devices together
    def on_train_batch_start(self, batch, batch_idx):
        accumulate = self.trainer.accumulate_grad_batches
        if batch_idx % accumulate:
            return
        now = time.perf_counter()
        if self._step_started is not None:
            elapsed = now - self._step_started
            tokens = batch["input_ids"].numel() * accumulate * self.trainer.world_size
            self.log("tokens_per_sec", tokens / elapsed, on_step=True, on_epoch=False)
            self.log("step_time_ms", 1000 * elapsed, on_step=True, on_epoch=False)
            if self.device.type == "cuda":  # peak since the process started, this device
                self.log("peak_mem_gib", torch.cuda.max_memory_allocated(self.device) / 2**30,
                         on_step=True, on_epoch=False)
        self._step_started = now

    # --------------------------------------------------------------- optimizer

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            # matrices decay; norms' gains (and any bias) do not; the embedding is tied to the head
            (decay if p.dim() >= 2 else no_decay).append(p)
        hp = self.hparams
        # the default (foreach) implementation: Lightning's mixed-precision plugins refuse gradient
        # clipping with the fused one, which unscales gradients internally
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr, betas=tuple(hp.betas),
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, hp.warmup_steps, hp.max_steps, hp.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # FSDP shards the gradients, so only its own clip_grad_norm_ sees the norm over all of them
        # (Lightning's FSDP precision plugin refuses norm clipping); DDP and one device go the usual way
        clip_sharded_norm = getattr(self.trainer.model, "clip_grad_norm_", None)
        if gradient_clip_val and clip_sharded_norm is not None and gradient_clip_algorithm in (None, "norm"):
            clip_sharded_norm(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # --------------------------------------------------------------- exact resume

    # RNG states are stored as plain lists and tensors so that Lightning's weights_only loading accepts them
    def on_save_checkpoint(self, checkpoint):
        version, mt_state, gauss = random.getstate()
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        checkpoint["rng_states"] = {
            "python": [version, list(mt_state), gauss],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, checkpoint):
        self._restart_micro_batch_count(checkpoint)
        states = checkpoint.get("rng_states")
        if not states:
            return
        version, mt_state, gauss = states["python"]
        random.setstate((version, tuple(mt_state), gauss))
        kind, keys, pos, has_gauss, cached = states["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])

    def _restart_micro_batch_count(self, checkpoint):
        """Lightning counts micro-batches and ends an accumulation window when that count is a multiple
        of accumulate_grad_batches. A checkpoint written mid-window (on an exception), or resumed with
        another accumulation (another world size under global_batch_tokens), leaves the count off that
        grid, and the first step after resuming would average fewer micro-batches than the others.
        The data module derives its position from the optimizer step count, so derive the micro-batch
        count from it too: the resumed run is a fresh pass over the remaining samples. (This hook runs
        before Lightning restores its loops from the same dictionary.)"""
        if self._trainer is None:  # LanguageModel.load_from_checkpoint: no loops to restore
            return
        fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
        progress = fit_loop.get("epoch_loop.batch_progress")
        if progress is None:
            return
        steps = int(checkpoint["global_step"])
        micro_batches = steps * self.trainer.accumulate_grad_batches
        counters = ("ready", "started", "processed", "completed")
        progress["total"].update(dict.fromkeys(counters, micro_batches))  # drives val_check_interval
        progress["current"].update(dict.fromkeys(counters, 0))
        progress["is_last_batch"] = False
        # the logger's step: Lightning saves it before incrementing it on a step's last micro-batch
        fit_loop.setdefault("epoch_loop.state_dict", {})["_batches_that_stepped"] = steps
