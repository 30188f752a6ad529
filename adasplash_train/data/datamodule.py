"""LightningDataModule: token shards -> fixed-length windows with document ids, resumable exactly."""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from .shards import TokenShards, build_token_shards, check_val_fraction, shard_dir_name
from .sources import build_source
from .synthetic import TASKS, SyntheticTasks
from .tokenizers import Tokenizer, build_tokenizer
from .windows import RankStridedSampler, TrainWindows, ValWindows

DEFAULT_CACHE_DIR = "~/.cache/adasplash_train"


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"data.{name} must be a positive integer, got {value!r}.")
    return value


class TokenDataModule(L.LightningDataModule):
    """Packs a tokenized corpus into ``seq_len`` windows.

    Batches are dicts of ``input_ids`` (B, T) long, ``targets`` (B, T) long (the next tokens) and
    ``doc_ids`` (B, T) int32 (document index inside each row, from 0).

    ``batch_size`` is the per-device micro-batch. ``num_train_samples`` is the total number of
    train windows over the whole run, for all devices together (trainer.max_steps x batch_size x
    accumulate_grad_batches x world_size). Sample i is fully determined by (seed, i).
    """

    def __init__(
        self,
        source: str = "stdlib",
        source_args: dict | None = None,
        tokenizer: str = "gpt2",
        tokenizer_path: str | None = None,
        seq_len: int = 1024,
        batch_size: int = 8,
        num_train_samples: int = 1024,
        val_batches: int = 8,
        val_fraction: float = 0.01,
        seed: int = 1337,
        cache_dir: str | None = None,
        num_workers: int = 0,
        synthetic_fraction: float = 0.0,
        synthetic_tasks: tuple[str, ...] | list[str] = TASKS,
        pin_memory: bool | None = None,
        progress: bool = True,
    ):
        super().__init__()
        self.source_name = source
        self.source_args = dict(source_args or {})
        self.tokenizer_name = tokenizer
        self.tokenizer_path = tokenizer_path
        self.seq_len = _positive_int("seq_len", seq_len)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.num_train_samples = _positive_int("num_train_samples", num_train_samples)
        self.val_batches = _positive_int("val_batches", val_batches)
        self.val_fraction = check_val_fraction(val_fraction)
        self.seed = int(seed)
        self.cache_dir = Path(os.path.expanduser(cache_dir or os.environ.get("ADASPLASH_CACHE", DEFAULT_CACHE_DIR)))
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"data.num_workers must be an integer >= 0, got {num_workers!r}.")
        self.num_workers = num_workers
        if not 0.0 <= float(synthetic_fraction) <= 1.0:
            raise ValueError(f"data.synthetic_fraction must be in [0, 1], got {synthetic_fraction!r}.")
        self.synthetic_fraction = float(synthetic_fraction)
        self.synthetic_tasks = tuple(synthetic_tasks)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.progress = progress

        self._tokenizer: Tokenizer | None = None
        self._source = None
        self.shards: TokenShards | None = None
        self._synthetic: SyntheticTasks | None = None
        # Global train samples already consumed by earlier runs (set when resuming).
        self.start_sample = 0
        # (samples consumed, optimizer step) at the checkpoint this run resumed from: counting restarts there
        self._resume_base = (0, 0)

    # ------------------------------------------------------------------ building blocks

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer(self.tokenizer_name, self.tokenizer_path)
        return self._tokenizer

    @property
    def source(self):
        if self._source is None:
            self._source = build_source(self.source_name, **self.source_args)
        return self._source

    @property
    def shard_dir(self) -> Path:
        name = shard_dir_name(self.source.cache_key(), self.tokenizer.name, self.val_fraction)
        return self.cache_dir / "tokens" / name

    def _world(self) -> tuple[int, int]:
        trainer = self._trainer_or_none()
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _trainer_or_none(self):
        return getattr(self, "trainer", None)

    # ------------------------------------------------------------------ Lightning hooks

    def prepare_data(self) -> None:
        """Tokenize the corpus into the cache (Lightning runs this on one process per node)."""
        build_token_shards(self.source, self.tokenizer, self.shard_dir, self.val_fraction, progress=self.progress)

    def setup(self, stage: str | None = None) -> None:
        if self.shards is not None:
            return
        shards = TokenShards(self.shard_dir)
        if shards.eot_id != self.tokenizer.eot_id:
            raise ValueError(f"cached shards at {self.shard_dir} were built with eot id {shards.eot_id}, "
                             f"but tokenizer {self.tokenizer.name!r} uses {self.tokenizer.eot_id}; delete the cache directory.")
        self.shards = shards
        if self.synthetic_fraction > 0:
            self._synthetic = SyntheticTasks(self.tokenizer, shards.train, self.synthetic_tasks)
            self._check_synthetic_fits()

    def _check_synthetic_fits(self) -> None:
        """Fail at setup, not hours into training, when seq_len cannot hold a synthetic task."""
        for task in self.synthetic_tasks:
            getattr(self._synthetic, task)(self.seq_len + 1, random.Random(0))

    def _require_setup(self) -> TokenShards:
        if self.shards is None:
            raise RuntimeError("TokenDataModule: call prepare_data() and setup() before asking for dataloaders.")
        return self.shards

    def train_dataset(self) -> TrainWindows:
        shards = self._require_setup()
        return TrainWindows(shards.train, self.seq_len, self.num_train_samples, self.seed, shards.eot_id,
                            start=self.start_sample, synthetic=self._synthetic,
                            synthetic_fraction=self.synthetic_fraction)

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset()
        world_size, rank = self._world()
        if len(dataset) < world_size * self.batch_size:
            raise ValueError(
                f"no full train batch left: num_train_samples={self.num_train_samples}, already consumed "
                f"{self.start_sample}, global micro-batch {world_size * self.batch_size}; raise num_train_samples "
                "(= trainer.max_steps x batch_size x accumulate_grad_batches x devices)."
            )
        sampler = RankStridedSampler(dataset, num_replicas=world_size, rank=rank)
        return self._loader(dataset, sampler=sampler, drop_last=True)

    def val_dataset(self) -> ValWindows:
        shards = self._require_setup()
        dataset = ValWindows(shards.val, self.seq_len, self.val_batches * self.batch_size, shards.eot_id)
        if dataset.overlapping:
            warnings.warn(
                f"the validation split ({shards.val.num_tokens} tokens) is shorter than val_batches x batch_size "
                f"windows of {self.seq_len + 1} tokens, so validation windows overlap; raise data.val_fraction "
                "or lower data.val_batches for independent windows.",
                stacklevel=2,
            )
        return dataset

    def val_dataloader(self) -> DataLoader:
        # A plain sequential loader: under DDP Lightning gives each rank its share of the windows.
        return self._loader(self.val_dataset(), sampler=None, drop_last=False)

    def _loader(self, dataset, sampler, drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    # ------------------------------------------------------------------ resume

    def samples_consumed(self) -> int:
        """Global train samples consumed so far, derived from the trainer's optimizer step count.

        ModelCheckpoint saves after an optimizer step, when exactly global_step x (global batch)
        samples have been used. Deriving it from global_step rather than counting in the
        DataLoader keeps prefetching workers from overcounting.
        """
        trainer = self._trainer_or_none()
        if trainer is None:
            return self.start_sample
        accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
        samples_per_step = self.batch_size * accumulate * int(trainer.world_size)
        # steps before the resume were taken at the earlier run's global batch, which may differ
        base_samples, base_step = self._resume_base
        return base_samples + (int(trainer.global_step) - base_step) * samples_per_step

    def state_dict(self) -> dict:
        trainer = self._trainer_or_none()
        return {
            "train_samples_consumed": self.samples_consumed(),
            "global_step": int(trainer.global_step) if trainer is not None else None,
            "seed": self.seed,
            "num_train_samples": self.num_train_samples,
            "seq_len": self.seq_len,
            "shard_dir": self.shard_dir.name,
            "synthetic_fraction": self.synthetic_fraction,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        if "train_samples_consumed" not in state_dict:
            raise KeyError("TokenDataModule state has no 'train_samples_consumed'; was it saved by this class?")
        for key, current in (("seed", self.seed), ("seq_len", self.seq_len), ("shard_dir", self.shard_dir.name),
                             ("synthetic_fraction", self.synthetic_fraction)):
            if key in state_dict and state_dict[key] != current:
                warnings.warn(f"resuming with data.{key}={current!r}, but the checkpoint was trained with "
                              f"{state_dict[key]!r}; the data order differs from the original run.", stacklevel=2)
        self.start_sample = int(state_dict["train_samples_consumed"])
        if state_dict.get("global_step") is not None:
            self._resume_base = (self.start_sample, int(state_dict["global_step"]))
