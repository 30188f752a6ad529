"""Where the Hydra configs live and the few resolvers they use."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf


def _find_config_dir() -> Path:
    # the repository's configs/ (editable installs and checkouts); ADASPLASH_CONFIG_DIR overrides
    env = os.environ.get("ADASPLASH_CONFIG_DIR")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[1] / "configs", Path.cwd() / "configs"]
    for path in candidates:
        if (path / "train.yaml").exists():
            return path
    raise FileNotFoundError(
        "could not find the configs/ folder (looked in: " + ", ".join(map(str, candidates)) + "). "
        "Install the checkout in editable mode (pip install -e .), run from the repository root, "
        "or set ADASPLASH_CONFIG_DIR."
    )


CONFIG_DIR = _find_config_dir()


def register_resolvers() -> None:
    # wandb stays offline unless the user asks for it: never block a run on the network
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", lambda: os.environ.get("WANDB_MODE", "offline") != "online")


def compose(config_name: str = "train", overrides: list[str] | None = None, return_hydra_config: bool = False):
    """Compose a config the way the command line would (for tests, notebooks and sweeps)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides or [],
                             return_hydra_config=return_hydra_config)
