"""load_model(path) -> (model, tokenizer): the one way evaluations get a trained model."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from adasplash_train.data.tokenizers import build_tokenizer
from adasplash_train.model import GPT, GPTConfig

log = logging.getLogger(__name__)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newer of checkpoints/last.ckpt (periodic) and checkpoints/interrupted.ckpt (written when a
    run stops on an exception or Ctrl-C), or None when the run has neither."""
    found = [p for p in (run_dir / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "interrupted.ckpt")
             if p.exists()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _portable_attention(attention: dict, device: torch.device) -> dict:
    """A checkpoint trained with a CUDA-only backend still loads on a CPU: use the backend that
    computes the same function there (entmax: the exact reference; softmax: SDPA's own choice)."""
    attention = dict(attention)
    if device.type != "cuda" and attention.get("backend") in ("triton", "flash2", "cudnn"):
        log.info("attention backend %s needs CUDA; loading with backend=auto on %s", attention["backend"], device)
        attention["backend"] = "auto"
    return attention


def load_model(path: str | Path, device: str | torch.device | None = None) -> tuple[GPT, object]:
    """Rebuild the model and its tokenizer from a training checkpoint (a Lightning .ckpt file, or a
    run directory, in which case its checkpoints/last.ckpt). The model is in eval mode on `device`
    (default: CUDA if available, else CPU)."""
    path = Path(path)
    if path.is_dir():
        path = latest_checkpoint(path) or path / "checkpoints" / "last.ckpt"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path} (pass a .ckpt file or a run directory)")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    hparams = checkpoint.get("hyper_parameters", {})
    if "model_config" not in hparams:
        raise ValueError(f"{path} is not an adasplash_train checkpoint (no model_config in its hyper-parameters)")
    model_config = dict(hparams["model_config"])
    model_config["attention"] = _portable_attention(model_config.get("attention", {}), device)
    model = GPT(GPTConfig(**model_config))

    prefix = "model."
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(state)
    model.to(device).eval()

    tokenizer = build_tokenizer(**(hparams.get("tokenizer_spec") or {"name": "byte"}))
    return model, tokenizer
