"""load_model(path) -> (model, tokenizer): the one way evaluations get a trained model."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from adasplash_train.data.tokenizers import build_tokenizer
from adasplash_train.model import GPT, GPTConfig

log = logging.getLogger(__name__)

# Lightning's FSDP sharded checkpoint is a folder: torch.distributed.checkpoint shards of the model and
# optimizer state from every rank, plus this file holding everything else (hyper-parameters, loops)
SHARDED_METADATA_FILE = "meta.pt"


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


def is_sharded_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / SHARDED_METADATA_FILE).is_file()


def _load_sharded_weights(folder: Path, model: GPT) -> None:
    """Fill `model` in place from a sharded checkpoint folder. torch.distributed.checkpoint reassembles
    each tensor from the shards of every rank that wrote it, so any world size loads on one process."""
    import torch.distributed.checkpoint as dcp

    stored = set(dcp.FileSystemReader(folder).read_metadata().state_dict_metadata)
    # Lightning stores {"model": LightningModule.state_dict()}; keys flatten to "model.model.<name>"
    tensors = model.state_dict()  # shares memory with the model, so loading into it loads the model
    wanted = {name: t for name, t in tensors.items() if f"model.model.{name}" in stored}
    # a tied weight (lm_head = embed) may be stored once; it is loaded when its twin is
    loaded_memory = {t.untyped_storage().data_ptr() for t in wanted.values()}
    missing = [name for name, t in tensors.items()
               if name not in wanted and t.untyped_storage().data_ptr() not in loaded_memory]
    if missing:
        raise ValueError(f"sharded checkpoint {folder} lacks model tensors {missing}; "
                         "was it written by a different model?")
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"model": {f"model.{name}": t for name, t in wanted.items()}}, checkpoint_id=folder, no_dist=True)


def load_model(path: str | Path, device: str | torch.device | None = None) -> tuple[GPT, object]:
    """Rebuild the model and its tokenizer from a training checkpoint (a Lightning .ckpt file, a
    sharded checkpoint folder written by trainer=fsdp, or a run directory, in which case its latest
    checkpoint). The model is in eval mode on `device` (default: CUDA if available, else CPU)."""
    path = Path(path)
    if path.is_dir() and not is_sharded_checkpoint(path):
        path = latest_checkpoint(path) or path / "checkpoints" / "last.ckpt"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path} (pass a .ckpt file, a sharded checkpoint folder "
                                "or a run directory)")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    sharded = is_sharded_checkpoint(path)
    checkpoint = torch.load(path / SHARDED_METADATA_FILE if sharded else path, map_location="cpu", weights_only=False)
    hparams = checkpoint.get("hyper_parameters", {})
    if "model_config" not in hparams:
        raise ValueError(f"{path} is not an adasplash_train checkpoint (no model_config in its hyper-parameters)")
    model_config = dict(hparams["model_config"])
    model_config["attention"] = _portable_attention(model_config.get("attention", {}), device)
    model = GPT(GPTConfig(**model_config))

    if sharded:
        _load_sharded_weights(path, model)
    else:
        prefix = "model."
        state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        model.load_state_dict(state)
    model.to(device).eval()

    return model, _rebuild_tokenizer(hparams.get("tokenizer_spec") or {"name": "byte"})


def _rebuild_tokenizer(spec: dict):
    """The training run's tokenizer. A vocabulary file path recorded on the training machine may not
    exist here: then the usual offline search (TIKTOKEN_CACHE_DIR, openai-whisper) finds the file,
    and its sha256 check still guarantees it is the same vocabulary."""
    spec = dict(spec)
    if spec.get("path") and not Path(spec["path"]).exists():
        log.warning("tokenizer file %s recorded in the checkpoint is not on this machine; searching the usual places",
                    spec["path"])
        spec.pop("path")
    return build_tokenizer(**spec)
