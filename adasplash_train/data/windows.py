"""Fixed-length training and validation windows over token shards, with per-token document ids.

A window of ``seq_len + 1`` tokens gives ``input_ids = window[:-1]`` and ``targets = window[1:]``.
``doc_ids`` numbers the documents inside the row from 0: it rises by one at every eot token after
position 0 (each document starts with eot), so attention can be restricted to one document.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from .hashing import hash_ints, uniform_int, unit_float
from .shards import TokenSplit
from .synthetic import SyntheticTasks

# Distinct purposes drawing from the same (seed, index) must not share random numbers.
_OFFSET_SALT = 1
_SYNTHETIC_CHOICE_SALT = 2
_SYNTHETIC_CONTENT_SALT = 3


def doc_ids_for(input_ids: np.ndarray, eot_id: int) -> np.ndarray:
    is_start = np.asarray(input_ids) == eot_id
    doc_ids = np.cumsum(is_start, dtype=np.int32)
    # A window that begins on a document's eot is still document 0.
    return doc_ids - np.int32(is_start[0]) if len(is_start) else doc_ids


def window_to_sample(window: np.ndarray, eot_id: int) -> dict[str, torch.Tensor]:
    window = np.asarray(window, dtype=np.int64)
    input_ids = window[:-1]
    return {
        "input_ids": torch.from_numpy(input_ids.copy()),
        "targets": torch.from_numpy(window[1:].copy()),
        "doc_ids": torch.from_numpy(doc_ids_for(input_ids, eot_id)),
    }


class TrainWindows(Dataset):
    """Item ``k`` is global train sample ``start + k``: a window at an offset drawn from (seed, index).

    With ``synthetic_fraction`` f > 0, the samples whose (seed, index) hash falls below f are
    synthetic documents instead; the choice and the content depend on the index alone.
    """

    def __init__(self, split: TokenSplit, seq_len: int, num_samples: int, seed: int, eot_id: int,
                 start: int = 0, synthetic: SyntheticTasks | None = None, synthetic_fraction: float = 0.0):
        if split.num_tokens < seq_len + 1:
            raise ValueError(
                f"the train split has {split.num_tokens} tokens, fewer than seq_len + 1 = {seq_len + 1}; "
                "use a larger corpus or a shorter model.max_seq_len."
            )
        if synthetic_fraction > 0 and synthetic is None:
            raise ValueError("synthetic_fraction > 0 needs a SyntheticTasks generator.")
        self.split = split
        self.seq_len = seq_len
        self.num_samples = num_samples
        self.seed = seed
        self.eot_id = eot_id
        self.start = start
        self.synthetic = synthetic
        self.synthetic_fraction = synthetic_fraction

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)

    def is_synthetic(self, index: int) -> bool:
        return self.synthetic_fraction > 0 and unit_float(self.seed, index, _SYNTHETIC_CHOICE_SALT) < self.synthetic_fraction

    def window(self, index: int) -> np.ndarray:
        """The ``seq_len + 1`` tokens of global sample ``index``."""
        if self.is_synthetic(index):
            rng = random.Random(hash_ints(self.seed, index, _SYNTHETIC_CONTENT_SALT))
            return self.synthetic.sample(self.seq_len + 1, rng).tokens
        offset = uniform_int(self.split.num_tokens - self.seq_len, self.seed, index, _OFFSET_SALT)
        return np.asarray(self.split.tokens[offset:offset + self.seq_len + 1])

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        if not 0 <= item < len(self):
            raise IndexError(f"train sample {item} out of range (dataset length {len(self)})")
        return window_to_sample(self.window(self.start + item), self.eot_id)


class ValWindows(Dataset):
    """``num_windows`` fixed windows evenly spaced over the validation split (no randomness)."""

    def __init__(self, split: TokenSplit, seq_len: int, num_windows: int, eot_id: int):
        if split.num_tokens < seq_len + 1:
            raise ValueError(
                f"the validation split has {split.num_tokens} tokens, fewer than seq_len + 1 = {seq_len + 1}; "
                "raise data.val_fraction or use a shorter model.max_seq_len."
            )
        self.split = split
        self.seq_len = seq_len
        self.eot_id = eot_id
        last_offset = split.num_tokens - seq_len - 1
        self.offsets = [round(k * last_offset / max(1, num_windows - 1)) for k in range(num_windows)]
        # True when the split is too short for the windows to be disjoint: they overlap.
        self.overlapping = num_windows * (seq_len + 1) > split.num_tokens

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        offset = self.offsets[item]
        return window_to_sample(self.split.tokens[offset:offset + self.seq_len + 1], self.eot_id)


class RankStridedSampler(DistributedSampler):
    """Rank ``r`` of ``W`` reads dataset items r, r + W, r + 2W, ... in order (no shuffling).

    Dataset item k is global sample ``start + k``, so rank r sees global indices start + i*W + r.
    Every rank gets the same count (the remainder is dropped) so DDP steps stay in lockstep.
    It subclasses DistributedSampler because Lightning leaves such samplers in place instead of
    wrapping them in another distributed sampler, which would shard the data twice.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=True)
        self.num_samples = len(dataset) // num_replicas
        self.total_size = self.num_samples * num_replicas

    def __iter__(self):
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples
