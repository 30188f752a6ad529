"""Tokenize a training corpus into the shard cache ahead of time (e.g. once, before a multi-GPU job).

    python -m scripts.prepare_data [data=stdlib] [data.tokenizer=gpt2] [paths.cache_dir=...] [key=value ...]

Takes the same config overrides as `python -m adasplash_train`, builds the configured data module
and runs its `prepare_data()`: the cache folder it prints is what training runs will reuse.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import open_dict

from adasplash_train.config import compose


def prepare(overrides: list[str]):
    cfg = compose("train", overrides)
    with open_dict(cfg):
        cfg.num_train_samples = cfg.batch_size  # no training run here: any valid count will do
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def main(argv: list[str] | None = None) -> None:
    datamodule = prepare(sys.argv[1:] if argv is None else argv)
    shards = datamodule.shards
    print(f"{datamodule.shard_dir}: {shards.train.num_tokens:,} train and {shards.val.num_tokens:,} val tokens "
          f"({datamodule.tokenizer.name} tokenizer)")


if __name__ == "__main__":
    main()
