"""Attention registry: config name -> inner attention function.

Every inner function has the signature `fn(q, k, v, *, causal=True, doc_ids=None) -> out` with
q: (B, H, Nq, D), k and v: (B, H_kv, Nk, D), H % H_kv == 0, out shaped like q. `doc_ids` (B, N),
non-decreasing per row, restricts each query to keys of its own packed document. With causal=False
Nk may differ from Nq (one decode query against the KV cache). Functions that can report attention
sparsity set `fn.supports_stats = True` and accept `return_stats=True`, returning (out, stats).

This file is the only door from the training framework to `kernels/`.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

log = logging.getLogger(__name__)

AttentionFn = Callable[..., torch.Tensor]
_REGISTRY: dict[str, Callable[..., AttentionFn]] = {}


def register(name: str):
    def wrap(factory):
        _REGISTRY[name] = factory
        return factory
    return wrap


def available() -> list[str]:
    return sorted(_REGISTRY)


def build_attention(name: str = "softmax", **options) -> AttentionFn:
    """Build the inner attention function named in the config (`attention.name`)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention.name={name!r}; choose one of {available()}")
    try:
        inspect.signature(_REGISTRY[name]).bind(**options)
    except TypeError as err:
        raise ValueError(
            f"attention {name!r} got options {sorted(options)}: {err}. An experiment file sets options for its "
            "own attention: use the matching experiment (e.g. experiment=softmax_8k rather than "
            "experiment=entmax_8k attention=softmax), or drop the extra keys with ~attention.<key>"
        ) from None
    return _REGISTRY[name](**options)


@functools.lru_cache(maxsize=None)
def _say_once(message: str) -> None:
    log.info(message)


def _check_shapes(q, k, v, causal, doc_ids):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be (batch, heads, seq_len, head_dim)")
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"head dim mismatch: q has {q.shape[-1]}, k has {k.shape[-1]}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(f"causal attention needs as many queries as keys, got {q.shape[2]} and {k.shape[2]}")
    if doc_ids is not None and tuple(doc_ids.shape) != (q.shape[0], q.shape[2]):
        raise ValueError(f"doc_ids must be (batch, seq_len) = {(q.shape[0], q.shape[2])}, got {tuple(doc_ids.shape)}")


def allowed_mask(n_q: int, n_k: int, causal: bool, doc_ids, device) -> torch.Tensor | None:
    """Boolean (B or 1, 1, Nq, Nk) mask of allowed query-key pairs, or None when everything is allowed."""
    mask = None
    if causal:
        mask = torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril()[None, None]
    if doc_ids is not None:
        same_doc = (doc_ids[:, :, None] == doc_ids[:, None, :])[:, None]
        mask = same_doc if mask is None else mask & same_doc
    return mask


# ---------------------------------------------------------------- softmax (PyTorch SDPA)

_SOFTMAX_BACKENDS = {
    "flash2": [SDPBackend.FLASH_ATTENTION],
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "math": [SDPBackend.MATH],
}


@functools.lru_cache(maxsize=None)
def _has_varlen_flash() -> bool:
    """torch >= 2.9 ships FlashAttention's variable-length kernel; older versions take the masked path."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        _say_once("softmax attention: this torch has no varlen_attn; packed documents use a masked SDPA kernel")
        return False
    return True


def _varlen_flash(q, k, v, doc_ids):
    """Causal attention inside each packed document with FlashAttention-2's variable-length kernel:
    the documents of every row are laid end to end and cut at document starts."""
    from torch.nn.attention.varlen import varlen_attn

    B, H, N, D = q.shape
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    offsets = torch.nonzero(starts.reshape(-1)).flatten()
    cu = torch.cat([offsets, offsets.new_tensor([B * N])]).to(torch.int32)
    max_len = int((cu[1:] - cu[:-1]).max())
    flat = lambda t: t.transpose(1, 2).reshape(B * N, t.shape[1], D)  # noqa: E731
    kwargs = {}
    params = inspect.signature(varlen_attn).parameters
    if "is_causal" in params:  # torch <= 2.10 spelling
        kwargs["is_causal"] = True
    else:
        kwargs["window_size"] = (-1, 0)
    if k.shape[1] != H:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            k, v = (t.repeat_interleave(H // t.shape[1], dim=1) for t in (k, v))
    out = varlen_attn(flat(q), flat(k), flat(v), cu, cu, max_len, max_len, **kwargs)
    return out.reshape(B, N, H, D).transpose(1, 2)


@register("softmax")
def softmax_attention(backend: str = "auto") -> AttentionFn:
    if backend not in (*_SOFTMAX_BACKENDS, "auto"):
        raise ValueError(f"attention.backend={backend!r} is not a softmax backend; choose one of "
                         f"{[*_SOFTMAX_BACKENDS, 'auto']}")

    def attend(q, k, v, *, causal=True, doc_ids=None):
        _check_shapes(q, k, v, causal, doc_ids)
        chosen = backend
        if chosen == "auto":
            chosen = "flash2" if q.is_cuda or doc_ids is None else "math"
            _say_once(f"softmax attention: backend auto -> {chosen} on {q.device.type}")
        if chosen == "cudnn" and not q.is_cuda:
            raise ValueError("attention.backend=cudnn needs a CUDA device; use flash2, math or auto on CPU")
        gqa = k.shape[1] != q.shape[1]
        if doc_ids is None:
            with sdpa_kernel(_SOFTMAX_BACKENDS[chosen]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
        if chosen == "flash2" and q.is_cuda and _has_varlen_flash():
            if not causal:
                raise ValueError("packed documents (doc_ids) with the flash2 backend are causal only")
            return _varlen_flash(q, k, v, doc_ids)
        # a dense block-diagonal mask: exact, used on CPU and where no fused masked kernel exists
        mask = allowed_mask(q.shape[2], k.shape[2], causal, doc_ids, q.device)
        if gqa and q.is_cuda:  # the memory-efficient kernel takes masks but not grouped-query heads
            k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
            gqa = False
        backends = _SOFTMAX_BACKENDS[chosen]
        if chosen in ("cudnn", "flash2"):  # cuDNN takes masks only on some versions: allow the fused fallback
            backends = backends + [SDPBackend.EFFICIENT_ATTENTION]
        if chosen == "flash2" and not q.is_cuda:  # the CPU flash kernel takes no mask
            backends = [SDPBackend.MATH]
        with sdpa_kernel(backends):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)

    return attend


# ---------------------------------------------------------------- α-entmax (our kernels)

def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 1.0 < alpha <= 2.0:
        raise ValueError(f"attention.alpha={alpha} must be in (1, 2] (1.5 and 2 are the fast paths)")
    return alpha


@register("entmax")
def entmax_attention(backend: str = "auto", alpha: float = 1.5, n_iter: int | None = None) -> AttentionFn:
    alpha = _check_alpha(alpha)
    if backend not in ("triton", "torch", "auto"):
        raise ValueError(f"attention.backend={backend!r} is not an entmax backend; choose triton, torch or auto")

    def attend(q, k, v, *, causal=True, doc_ids=None, return_stats=False):
        _check_shapes(q, k, v, causal, doc_ids)
        chosen = backend
        if chosen == "auto":
            chosen = "triton" if q.is_cuda else "torch"
            _say_once(f"entmax attention: backend auto -> {chosen} on {q.device.type}")
        if chosen == "triton" and q.shape[2] != k.shape[2]:
            # a decode step (one query against the KV cache) is a single exact row: the reference serves
            chosen = "torch"
        if chosen == "triton":
            from kernels import entmax_attention as kernel
        else:
            from kernels.reference import entmax_attention as kernel
        return kernel(q, k, v, alpha=alpha, causal=causal, doc_ids=doc_ids, n_iter=n_iter, return_stats=return_stats)

    attend.supports_stats = True
    return attend


# ---------------------------------------------------------------- hierarchical (block selection)

def _check_block_backend(backend: str, name: str) -> str:
    if backend not in ("triton", "torch", "auto"):
        raise ValueError(f"attention.backend={backend!r} is not a {name} backend; choose triton, torch or auto")
    return backend


def _choose_block_backend(backend: str, name: str, q, k) -> str:
    """triton | torch for one call; `auto` picks Triton on CUDA. A decode step (one query against the
    KV cache) always runs the exact reference: it is a single cheap row."""
    chosen = backend
    if chosen == "auto":
        chosen = "triton" if q.is_cuda else "torch"
        _say_once(f"{name} attention: backend auto -> {chosen} on {q.device.type}")
    if q.shape[2] != k.shape[2]:
        chosen = "torch"
    return chosen


def _check_block_size(block_size) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"attention.block_size={block_size!r} must be a positive int (64 is the default; "
                         f"the triton backend takes 16, 32, 64 or 128)")
    return block_size


def _block_selection(name: str, kernel: str, backend: str, **kernel_args) -> AttentionFn:
    """Registry method `name`: kernels.hierarchical.<kernel> with its validated arguments bound."""
    backend = _check_block_backend(backend, name)

    def attend(q, k, v, *, causal=True, doc_ids=None, return_stats=False):
        from kernels import hierarchical

        _check_shapes(q, k, v, causal, doc_ids)
        chosen = _choose_block_backend(backend, name, q, k)
        return getattr(hierarchical, kernel)(q, k, v, causal=causal, doc_ids=doc_ids, return_stats=return_stats,
                                             backend=chosen, **kernel_args)

    attend.supports_stats = True
    return attend


@register("hierarchical")
def hierarchical_entmax_attention(backend: str = "auto", alpha: float = 1.5, block_size: int = 64) -> AttentionFn:
    """alpha-entmax over mean-pooled key blocks picks a variable number of blocks per query; softmax
    attends over their tokens with the block weights as a prior (kernels/hierarchical.py)."""
    return _block_selection("hierarchical", "hierarchical_attention", backend, alpha=_check_alpha(alpha),
                            block_size=_check_block_size(block_size))


@register("topk_blocks")
def topk_blocks_attention(backend: str = "auto", top_k: int = 16, block_size: int = 64) -> AttentionFn:
    """The fixed-budget baseline of `hierarchical`: the same block summaries, the top_k blocks (plus
    the query's own block) per query, plain softmax over their tokens."""
    block_size = _check_block_size(block_size)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"attention.top_k={top_k!r} must be a positive int (distant key blocks per query)")
    return _block_selection("topk_blocks", "topk_block_attention", backend, top_k=top_k, block_size=block_size)
