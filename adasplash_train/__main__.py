"""`python -m adasplash_train [experiment=NAME] [key=value ...]`: the Hydra entry point."""

from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig

from adasplash_train.config import CONFIG_DIR, register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from adasplash_train.train import train  # after Hydra has parsed arguments: `--help` stays fast

    metrics = train(cfg)
    # returned for Hydra sweepers that optimise a number
    return metrics.get("val/loss")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
