"""Hierarchical entmax attention: alpha-entmax picks key blocks, softmax attends inside them.

For every query i (docs/hierarchical.md has the derivation and the design choices):

1. Block summaries. Keys are cut into blocks of `block_size` positions on the absolute grid; a
   block's summary is the mean of its keys. With packed documents only the keys of the query's own
   document count, so the (at most two) blocks a document boundary cuts get a per-document mean.
2. Block scores c_ib = scale * q_i . summary_b for the *distant* blocks b: every block the query may
   see except its own. The query's own block (the local window) is always attended.
3. Block weights w_i = alpha-entmax(c_i) over the distant blocks: a variable number of blocks gets
   w > 0 (the "selected" blocks); `topk_block_attention` instead keeps a fixed number k of blocks.
4. Token attention with the weights as a prior: for a token j of block b,
       p_ij = pi_ib exp(s_ij) / sum_j' pi_ib' exp(s_ij'),   s_ij = scale * q_i . k_j,
   with pi_ib = w_ib / max_b' w_ib' for distant blocks and pi = 1 for the local block, i.e. a
   softmax over the selected tokens with the additive bias log pi_ib. The local block counts as
   much as the best distant block; blocks with w = 0 have bias -inf and are never read.

With every block selected and equal weights all biases are 0 and this is exactly softmax
attention; top-k with k = all blocks is too. Steps 1-3 are O(N^2 / block_size) and run in PyTorch
(reusing `reference.entmax`); step 4 is `block_attention` (Triton, forward and backward, skipping
unselected blocks) or `block_attention_reference` (exact PyTorch, any dtype incl. float64).

Gradients: the Triton backward returns dL/dbias_ib = sum_{j in b} dS_ij (dS the usual softmax score
gradient); autograd carries it through log, the max normalisation and the entmax Jacobian into the
block scores, hence into q and, through the pooled summaries, into k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import torch
import triton
import triton.language as tl
from torch.utils.checkpoint import checkpoint

from . import reference
from .entmax_attention import (
    SUPPORTED_DTYPES,
    SUPPORTED_HEAD_DIMS,
    _allowed,
    _dot,
    _dot_precision,
    _load_doc_ids,
    _load_rows,
    document_runs,
    require_runnable_device,
)

__all__ = [
    "hierarchical_attention",
    "topk_block_attention",
    "block_scores",
    "entmax_block_bias",
    "topk_block_bias",
    "block_attention",
    "block_attention_reference",
    "selection_stats",
]

TRITON_BLOCK_SIZES = (16, 32, 64, 128)
BACKENDS = ("triton", "torch")
# Token scores materialised per query chunk by the reference: about 64 MiB in float32.
_REFERENCE_SCORE_ELEMENTS = 1 << 24
# Query rows per tile when stats count the (query tile x key block) pairs a kernel would visit.
STATS_QUERY_TILE = 64


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


def _check_inputs(q, k, v, causal, scale, doc_ids, block_size, caller):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 4:
            raise ValueError(f"{caller}: {name} must be a floating (batch, heads, seq_len, head_dim) tensor, "
                             f"got {type(t).__name__} {tuple(getattr(t, 'shape', ()))}")
    if k.shape != v.shape:
        raise ValueError(f"{caller}: k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    batch, heads, n_q, head_dim = q.shape
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"{caller}: k/v shape {tuple(k.shape)} does not match q {tuple(q.shape)} in batch or head_dim")
    if k.shape[1] < 1 or heads % k.shape[1]:
        raise ValueError(f"{caller}: q heads ({heads}) must be a multiple of k/v heads ({k.shape[1]})")
    n_k = k.shape[2]
    if n_q < 1 or n_k < n_q:
        raise ValueError(f"{caller}: need 1 <= Nq <= Nk (queries are the last Nq key positions), "
                         f"got Nq={n_q}, Nk={n_k}")
    if not isinstance(causal, bool):
        raise TypeError(f"{caller}: causal must be a bool, got {causal!r}")
    if causal and n_q != n_k:
        raise ValueError(f"{caller}: causal=True needs Nq == Nk, got {n_q} and {n_k}; "
                         f"pass causal=False for decoding against a KV cache")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"{caller}: block_size must be a positive int, got {block_size!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, Real)
                              or not math.isfinite(scale) or scale <= 0):
        raise ValueError(f"{caller}: scale must be a positive float or None, got {scale!r}")
    if doc_ids is not None:
        if not isinstance(doc_ids, torch.Tensor) or doc_ids.is_floating_point() or doc_ids.dtype == torch.bool:
            raise TypeError(f"{caller}: doc_ids must be an integer tensor of shape (batch, seq_len)")
        if tuple(doc_ids.shape) != (batch, n_q) or n_q != n_k:
            raise ValueError(f"{caller}: doc_ids must have shape (batch, seq_len) = {(batch, n_k)} with "
                             f"Nq == Nk, got {tuple(doc_ids.shape)} for Nq={n_q}, Nk={n_k}")
        if n_q > 1 and bool((doc_ids[:, 1:] < doc_ids[:, :-1]).any()):
            raise ValueError(f"{caller}: doc_ids must be non-decreasing along the sequence (packed documents)")
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def _check_alpha(alpha, caller):
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 1.0 < float(alpha) <= 2.0:
        raise ValueError(f"{caller}: alpha must be a float in (1, 2] (1.5 and 2 are exact closed forms), "
                         f"got {alpha!r}")
    return float(alpha)


def _check_backend(backend, caller):
    if backend not in BACKENDS:
        raise ValueError(f"{caller}: backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _working_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------------
# block layout, summaries and scores (PyTorch; N^2 / block_size work)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockLayout:
    """Which key blocks each query sees. Tensors broadcast to (batch, heads, Nq, n_blocks).

    local: the query's own block (always attended). candidate: the distant blocks the block-level
    entmax chooses from (causal: blocks before the local one; otherwise every other block), only
    those holding at least one key of the query's document. doc_start / doc_end: (batch or 1, Nq)
    key range [doc_start, doc_end) of the query's document.
    """

    block_size: int
    n_blocks: int
    local: torch.Tensor
    candidate: torch.Tensor
    doc_start: torch.Tensor
    doc_end: torch.Tensor


def block_layout(n_q, n_k, block_size, *, causal, doc_ids=None, device=None) -> BlockLayout:
    """Local and candidate blocks of every query; queries sit at key positions Nk - Nq + i."""
    if doc_ids is not None:
        device = doc_ids.device
    n_blocks = triton.cdiv(n_k, block_size)
    blocks = torch.arange(n_blocks, device=device)
    query_block = (torch.arange(n_q, device=device) + (n_k - n_q)) // block_size  # (Nq,)
    if doc_ids is None:
        doc_start = torch.zeros(1, n_q, dtype=torch.long, device=device)
        doc_end = torch.full((1, n_q), n_k, dtype=torch.long, device=device)
    else:
        ids = doc_ids.contiguous()
        doc_start = torch.searchsorted(ids, ids, right=False)
        doc_end = torch.searchsorted(ids, ids, right=True)
    first_block = (doc_start // block_size)[..., None]
    last_block = ((doc_end - 1) // block_size)[..., None]
    local = (blocks == query_block[:, None])[None, None]  # (1, 1, Nq, n_blocks)
    candidate = (blocks >= first_block) & (blocks <= last_block) & (blocks != query_block[:, None])
    if causal:
        candidate &= blocks < query_block[:, None]
    return BlockLayout(block_size, n_blocks, local, candidate[:, None], doc_start, doc_end)


def _grouped_matmul(q, keys_t):
    """q (B, H, Nq, D) @ keys_t (B, H_kv, D, M) with query head h reading kv head h // (H / H_kv)."""
    batch, heads, n_q, head_dim = q.shape
    kv_heads = keys_t.shape[1]
    grouped = q.reshape(batch, kv_heads, heads // kv_heads, n_q, head_dim) @ keys_t.unsqueeze(2)
    return grouped.reshape(batch, heads, n_q, keys_t.shape[-1])


def _blocked(k, block_size):
    """k (B, H_kv, N, D) zero-padded and viewed as (B, H_kv, n_blocks, block_size, D)."""
    batch, kv_heads, n_k, head_dim = k.shape
    n_blocks = triton.cdiv(n_k, block_size)
    padded = torch.nn.functional.pad(k, (0, 0, 0, n_blocks * block_size - n_k))
    return padded.reshape(batch, kv_heads, n_blocks, block_size, head_dim)


def block_means(k, block_size):
    """Mean key of every block (the last block averages only its real keys): (B, H_kv, n_blocks, D)."""
    n_k = k.shape[2]
    sums = _blocked(k, block_size).sum(dim=3)
    counts = (n_k - block_size * torch.arange(sums.shape[2], device=k.device)).clamp(max=block_size)
    return sums / counts.to(k.dtype)[:, None]


def _range_means(k, block_size, block, start, end):
    """Mean of keys [start, end) lying inside block `block`, per query: (B, H_kv, Nq, D).

    block, start, end: (batch or 1, Nq) integers. Sums come from prefix sums *within* each block,
    so no difference of long running sums (and its rounding) is ever taken.
    """
    batch, kv_heads, _, head_dim = k.shape
    blocked = _blocked(k, block_size)
    prefix = torch.nn.functional.pad(blocked.cumsum(dim=3), (0, 0, 1, 0))  # (B, H_kv, nb, bs + 1, D)
    flat = prefix.reshape(batch, kv_heads, -1, head_dim)

    def gather(position):
        # the prefix up to absolute position p of block b sits at b * (block_size + 1) + (p - b * block_size)
        index = (block + position).expand(batch, -1)[:, None, :, None].expand(-1, kv_heads, -1, head_dim)
        return torch.gather(flat, 2, index)

    counts = (end - start).clamp_min(1).expand(batch, -1)[:, None, :, None].to(k.dtype)
    return (gather(end) - gather(start)) / counts


def _replace_column(scores, column, values):
    """scores[..., i, column_i] = values[..., i] (column: (batch or 1, Nq); values: (B, H, Nq))."""
    blocks = torch.arange(scores.shape[-1], device=scores.device)
    hit = blocks == column[:, None, :, None]
    return torch.where(hit, values[..., None], scores)


def block_scores(q, k, *, block_size=64, causal=True, doc_ids=None, scale=None):
    """Scores of the distant key blocks, -inf where a block is not a candidate, and the layout.

    Returns (scores (B, H, Nq, n_blocks) in the working dtype (float32, or float64 for float64
    inputs), BlockLayout). A block's summary is the mean of the keys the query may see in it.
    """
    scale = _check_inputs(q, k, k, causal, scale, doc_ids, block_size, "block_scores")
    with _full_precision(q.device):
        return _block_scores(q, k, block_size, causal, doc_ids, scale)


def _full_precision(device):
    """Autocast off: under mixed precision the matmuls would otherwise round the scores to bf16,
    and entmax thresholds (and the reference's exactness) depend on them."""
    return torch.autocast(device_type=device.type, enabled=False)


def _block_scores(q, k, block_size, causal, doc_ids, scale):
    work = _working_dtype(q.dtype)
    qw, kw = q.to(work), k.to(work)
    n_q, n_k = q.shape[2], k.shape[2]
    layout = block_layout(n_q, n_k, block_size, causal=causal, doc_ids=doc_ids, device=q.device)
    scores = scale * _grouped_matmul(qw, block_means(kw, block_size).transpose(-1, -2))
    if doc_ids is not None:
        # A document boundary cuts at most its first and its last block; those get the mean of the
        # document's keys only, so no information crosses documents. (Causal queries never see
        # their document's last block as a distant one.)
        start, end = layout.doc_start, layout.doc_end
        first = start // block_size
        first_end = torch.minimum(end, (first + 1) * block_size)
        summary = _range_means(kw, block_size, first, start, first_end)
        scores = _replace_column(scores, first, scale * _grouped_matmul_rows(qw, summary))
        if not causal:
            last = (end - 1) // block_size
            last_start = torch.maximum(start, last * block_size)
            summary = _range_means(kw, block_size, last, last_start, end)
            scores = _replace_column(scores, last, scale * _grouped_matmul_rows(qw, summary))
    return scores.masked_fill(~layout.candidate, float("-inf")), layout


def _grouped_matmul_rows(q, per_query_keys):
    """Row-wise q_i . key_i with GQA: q (B, H, Nq, D), per_query_keys (B, H_kv, Nq, D) -> (B, H, Nq)."""
    batch, heads, n_q, head_dim = q.shape
    kv_heads = per_query_keys.shape[1]
    grouped = q.reshape(batch, kv_heads, heads // kv_heads, n_q, head_dim) * per_query_keys.unsqueeze(2)
    return grouped.sum(-1).reshape(batch, heads, n_q)


# ----------------------------------------------------------------------------------------------
# block weights -> additive prior (bias) on the token scores
# ----------------------------------------------------------------------------------------------


class _LogWeight(torch.autograd.Function):
    """log w with log 0 = -inf and a zero (not NaN) gradient there: unselected blocks get none."""

    @staticmethod
    def forward(ctx, weights):
        ctx.save_for_backward(weights)
        return torch.log(weights)

    @staticmethod
    def backward(ctx, grad):
        (weights,) = ctx.saved_tensors
        selected = weights > 0
        return torch.where(selected, grad / torch.where(selected, weights, torch.ones_like(weights)), 0.0)


def entmax_block_bias(scores, layout: BlockLayout, alpha=1.5):
    """Bias log(w / max w) on distant blocks (w = alpha-entmax of the block scores), 0 on the local
    block, -inf on blocks with w = 0. Differentiable in the scores. Returns (bias, weights)."""
    alpha = _check_alpha(alpha, "entmax_block_bias")
    weights = reference.entmax(scores, alpha=alpha, dim=-1)
    log_weights = _LogWeight.apply(weights)
    top = log_weights.amax(dim=-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # rows without distant blocks
    bias = torch.where(layout.local, torch.zeros_like(log_weights), log_weights - top)
    return bias, weights


def topk_block_bias(scores, layout: BlockLayout, top_k=16):
    """Bias 0 on the top_k highest-scoring distant blocks and the local block, -inf elsewhere.

    A hard selection (as in MoBA / NSA's selection branch): no gradient reaches the scores.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"topk_block_bias: top_k must be a positive int, got {top_k!r}")
    scores = scores.detach()
    keep = min(top_k, scores.shape[-1])
    index = scores.topk(keep, dim=-1).indices
    chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, index, True) & torch.isfinite(scores)
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    return torch.where(chosen | layout.local, zero, float("-inf"))


@torch.no_grad()
def selection_stats(bias, layout: BlockLayout, query_tile=STATS_QUERY_TILE) -> dict:
    """How much of the key sequence the selection keeps.

    selected_block_fraction: selected (query, key block) pairs / pairs the query could see (local
    block + candidates). blocks_per_query: mean number of selected blocks. block_sparsity: fraction
    of allowed (query_tile rows x key block) tiles that no row of the tile selects, i.e. the key
    tiles a block-sparse kernel skips (comparable to the entmax kernel's block_sparsity).
    """
    selected = bias > float("-inf")
    eligible = (layout.candidate | layout.local).expand_as(selected)
    batch, heads, n_q, n_blocks = selected.shape
    pad_rows = (-n_q) % query_tile

    def tiles(mask):
        padded = torch.nn.functional.pad(mask, (0, 0, 0, pad_rows), value=False)
        return padded.reshape(batch, heads, -1, query_tile, n_blocks).any(dim=3)

    n_eligible, n_selected = int(eligible.sum()), int(selected.sum())
    eligible_tiles = int(tiles(eligible).sum())
    selected_tiles = int(tiles(selected).sum())
    return {
        "selected_block_fraction": n_selected / n_eligible if n_eligible else 0.0,
        "blocks_per_query": n_selected / (batch * heads * n_q),
        "block_sparsity": 1.0 - selected_tiles / eligible_tiles if eligible_tiles else 0.0,
    }


# ----------------------------------------------------------------------------------------------
# token attention over the selected blocks: exact PyTorch reference
# ----------------------------------------------------------------------------------------------


def _reference_chunk(q_chunk, k, v, bias_chunk, mask, scale, block_size):
    n_k = k.shape[2]
    token_bias = bias_chunk.repeat_interleave(block_size, dim=-1)[..., :n_k]
    logits = scale * _grouped_matmul(q_chunk, k.transpose(-1, -2)) + token_bias
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    batch, heads, rows, _ = probs.shape
    kv_heads = v.shape[1]
    out = probs.reshape(batch, kv_heads, heads // kv_heads, rows, n_k) @ v.unsqueeze(2)
    return out.reshape(batch, heads, rows, v.shape[-1])


def block_attention_reference(q, k, v, bias, *, block_size=64, causal=True, doc_ids=None, scale=None,
                              chunk_size=None):
    """softmax(scale q k^T + bias[block of key] + mask) v, exactly, in float32 (float64 for float64).

    bias: (B, H, Nq, n_blocks), -inf for blocks a query does not attend. Rows of queries are
    processed in chunks under torch.utils.checkpoint when gradients are needed, so memory stays
    near one chunk's scores (about 16M elements by default).
    """
    scale = _check_inputs(q, k, v, causal, scale, doc_ids, block_size, "block_attention_reference")
    batch, heads, n_q, _ = q.shape
    n_k = k.shape[2]
    _check_bias(bias, (batch, heads, n_q, triton.cdiv(n_k, block_size)), "block_attention_reference")
    work = _working_dtype(q.dtype)
    qw, kw, vw, bw = q.to(work), k.to(work), v.to(work), bias.to(work)
    if chunk_size is None:
        chunk_size = max(1, min(n_q, _REFERENCE_SCORE_ELEMENTS // max(1, batch * heads * n_k)))
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, bias))
    outputs = []
    with _full_precision(q.device):
        for start in range(0, n_q, chunk_size):
            stop = min(n_q, start + chunk_size)
            mask = reference.allowed_mask(stop - start, n_k, causal=causal, doc_ids=doc_ids, q_offset=start,
                                          device=q.device)
            args = (qw[:, :, start:stop], kw, vw, bw[:, :, start:stop], mask, scale, block_size)
            outputs.append(checkpoint(_reference_chunk, *args, use_reentrant=False) if needs_grad
                           else _reference_chunk(*args))
    return torch.cat(outputs, dim=2).to(q.dtype)


def _check_bias(bias, shape, caller):
    if not isinstance(bias, torch.Tensor) or not bias.is_floating_point() or tuple(bias.shape) != shape:
        raise ValueError(f"{caller}: bias must be a float tensor of shape (B, H, Nq, n_blocks) = {shape}, "
                         f"got {tuple(getattr(bias, 'shape', ()))}")


# ----------------------------------------------------------------------------------------------
# token attention over the selected blocks: Triton
# ----------------------------------------------------------------------------------------------


@triton.jit
def _biased_logits(q, k, bias, rows, cols, row_docs, DocIds_b, N, scale,
                   CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """scale * q k^T + the rows' bias for this key block, -inf where masked: [BLOCK_M, BLOCK_N]."""
    s = _dot(q, tl.trans(k), None, DOT_PRECISION) * scale + bias[:, None]
    col_docs = _load_doc_ids(DocIds_b, cols, N, -1, HAS_DOCS)
    allowed = _allowed(rows[:, None], cols[None, :], row_docs[:, None], col_docs[None, :], N, CAUSAL, HAS_DOCS)
    return tl.where(allowed, s, float("-inf"))


@triton.jit
def _block_attention_fwd_kernel(
    Q, K, V, Bias, Out, Lse, DocIds, TileList, TileCount,
    scale, N, n_blocks, n_q_tiles,
    H: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program per (query tile, head): online softmax over the key blocks some row selected."""
    qt = tl.program_id(0)
    bh = tl.program_id(1)
    batch = bh // H
    kv_head = batch * (H // GROUP) + (bh % H) // GROUP
    K_head = K + kv_head.to(tl.int64) * N * HEAD_DIM
    V_head = V + kv_head.to(tl.int64) * N * HEAD_DIM
    Bias_head = Bias + bh.to(tl.int64) * N * n_blocks
    DocIds_b = DocIds + batch.to(tl.int64) * N
    table_row = bh.to(tl.int64) * n_q_tiles + qt

    rows = qt * BLOCK_M + tl.arange(0, BLOCK_M)
    q = _load_rows(Q + bh.to(tl.int64) * N * HEAD_DIM, rows, N, HEAD_DIM)
    row_docs = _load_doc_ids(DocIds_b, rows, N, -2, HAS_DOCS)
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    n_list = tl.load(TileCount + table_row)
    for i in range(0, n_list):
        kb = tl.load(TileList + table_row * n_blocks + i)
        cols = kb * BLOCK_N + tl.arange(0, BLOCK_N)
        bias = tl.load(Bias_head + rows * n_blocks + kb, mask=rows < N, other=float("-inf"))
        k = _load_rows(K_head, cols, N, HEAD_DIM)
        logits = _biased_logits(q, k, bias, rows, cols, row_docs, DocIds_b, N, scale, CAUSAL, HAS_DOCS,
                                DOT_PRECISION)
        new_max = tl.maximum(row_max, tl.max(logits, axis=1))
        # Rows that have seen only -inf so far keep a finite reference point (no -inf - -inf).
        safe_max = tl.where(new_max > float("-inf"), new_max, 0.0)
        p = tl.exp(logits - safe_max[:, None])
        rescale = tl.exp(row_max - safe_max)
        row_sum = row_sum * rescale + tl.sum(p, axis=1)
        v = _load_rows(V_head, cols, N, HEAD_DIM)
        acc = _dot(p.to(v.dtype), v, acc * rescale[:, None], DOT_PRECISION)
        row_max = new_max

    has_mass = row_sum > 0
    out = acc / tl.where(has_mass, row_sum, 1.0)[:, None]
    lse = tl.where(has_mass, row_max + tl.log(tl.where(has_mass, row_sum, 1.0)), float("inf"))
    dims = tl.arange(0, HEAD_DIM)
    tl.store(Out + bh.to(tl.int64) * N * HEAD_DIM + rows[:, None] * HEAD_DIM + dims[None, :],
             out.to(Out.dtype.element_ty), mask=rows[:, None] < N)
    tl.store(Lse + bh.to(tl.int64) * N + rows, lse, mask=rows < N)


@triton.jit
def _block_attention_bwd_dq_kernel(
    Q, K, V, Bias, DO, Lse, Delta, DQ, DBias, DocIds, TileList, TileCount,
    scale, N, n_blocks, n_q_tiles,
    H: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """dQ and dBias row-wise: dS = p (dP - delta); dBias[i, block] = sum of dS over the block's keys
    (a key tile is exactly one block, so each dBias entry has one writer)."""
    qt = tl.program_id(0)
    bh = tl.program_id(1)
    batch = bh // H
    kv_head = batch * (H // GROUP) + (bh % H) // GROUP
    head_offset = bh.to(tl.int64) * N * HEAD_DIM
    K_head = K + kv_head.to(tl.int64) * N * HEAD_DIM
    V_head = V + kv_head.to(tl.int64) * N * HEAD_DIM
    Bias_head = Bias + bh.to(tl.int64) * N * n_blocks
    DBias_head = DBias + bh.to(tl.int64) * N * n_blocks
    DocIds_b = DocIds + batch.to(tl.int64) * N
    table_row = bh.to(tl.int64) * n_q_tiles + qt

    rows = qt * BLOCK_M + tl.arange(0, BLOCK_M)
    q = _load_rows(Q + head_offset, rows, N, HEAD_DIM)
    do = _load_rows(DO + head_offset, rows, N, HEAD_DIM)
    row_docs = _load_doc_ids(DocIds_b, rows, N, -2, HAS_DOCS)
    lse = tl.load(Lse + bh.to(tl.int64) * N + rows, mask=rows < N, other=float("inf"))
    delta = tl.load(Delta + bh.to(tl.int64) * N + rows, mask=rows < N, other=0.0)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    n_list = tl.load(TileCount + table_row)
    for i in range(0, n_list):
        kb = tl.load(TileList + table_row * n_blocks + i)
        cols = kb * BLOCK_N + tl.arange(0, BLOCK_N)
        bias = tl.load(Bias_head + rows * n_blocks + kb, mask=rows < N, other=float("-inf"))
        k = _load_rows(K_head, cols, N, HEAD_DIM)
        v = _load_rows(V_head, cols, N, HEAD_DIM)
        logits = _biased_logits(q, k, bias, rows, cols, row_docs, DocIds_b, N, scale, CAUSAL, HAS_DOCS,
                                DOT_PRECISION)
        p = tl.exp(logits - lse[:, None])
        dp = _dot(do, tl.trans(v), None, DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        acc = _dot(ds.to(k.dtype), k, acc, DOT_PRECISION)
        tl.store(DBias_head + rows * n_blocks + kb, tl.sum(ds, axis=1), mask=rows < N)

    dims = tl.arange(0, HEAD_DIM)
    tl.store(DQ + head_offset + rows[:, None] * HEAD_DIM + dims[None, :],
             (acc * scale).to(DQ.dtype.element_ty), mask=rows[:, None] < N)


@triton.jit
def _block_attention_bwd_dkdv_kernel(
    Q, K, V, Bias, DO, Lse, Delta, DK, DV, DocIds, KeyList, KeyCount,
    scale, N, n_blocks, n_q_tiles,
    H: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """dK, dV for one key block and kv head, summed over the GROUP query heads sharing it and over
    the query tiles in which some row selected this block."""
    kb = tl.program_id(0)
    bhk = tl.program_id(1)
    H_KV: tl.constexpr = H // GROUP
    batch = bhk // H_KV
    kv_offset = bhk.to(tl.int64) * N * HEAD_DIM
    DocIds_b = DocIds + batch.to(tl.int64) * N

    cols = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    k = _load_rows(K + kv_offset, cols, N, HEAD_DIM)
    v = _load_rows(V + kv_offset, cols, N, HEAD_DIM)
    col_docs = _load_doc_ids(DocIds_b, cols, N, -1, HAS_DOCS)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    for member in range(0, GROUP):
        bh = batch * H + (bhk % H_KV) * GROUP + member
        head_offset = bh.to(tl.int64) * N * HEAD_DIM
        list_row = bh.to(tl.int64) * n_blocks + kb
        n_list = tl.load(KeyCount + list_row)
        for i in range(0, n_list):
            qt = tl.load(KeyList + list_row * n_q_tiles + i)
            rows = qt * BLOCK_M + tl.arange(0, BLOCK_M)
            q = _load_rows(Q + head_offset, rows, N, HEAD_DIM)
            do = _load_rows(DO + head_offset, rows, N, HEAD_DIM)
            lse = tl.load(Lse + bh.to(tl.int64) * N + rows, mask=rows < N, other=float("inf"))
            delta = tl.load(Delta + bh.to(tl.int64) * N + rows, mask=rows < N, other=0.0)
            bias = tl.load(Bias + bh.to(tl.int64) * N * n_blocks + rows * n_blocks + kb, mask=rows < N,
                           other=float("-inf"))
            row_docs = _load_doc_ids(DocIds_b, rows, N, -2, HAS_DOCS)
            # Transposed tile: [BLOCK_N keys, BLOCK_M queries].
            s_t = _dot(k, tl.trans(q), None, DOT_PRECISION) * scale + bias[None, :]
            allowed = _allowed(rows[None, :], cols[:, None], row_docs[None, :], col_docs[:, None], N,
                               CAUSAL, HAS_DOCS)
            p_t = tl.exp(tl.where(allowed, s_t, float("-inf")) - lse[None, :])
            dv = _dot(p_t.to(do.dtype), do, dv, DOT_PRECISION)
            dp_t = _dot(v, tl.trans(do), None, DOT_PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            dk = _dot(ds_t.to(q.dtype), q, dk, DOT_PRECISION)

    dims = tl.arange(0, HEAD_DIM)
    offsets = kv_offset + cols[:, None] * HEAD_DIM + dims[None, :]
    tl.store(DK + offsets, (dk * scale).to(DK.dtype.element_ty), mask=cols[:, None] < N)
    tl.store(DV + offsets, dv.to(DV.dtype.element_ty), mask=cols[:, None] < N)


@dataclass(frozen=True)
class _LaunchConfig:
    causal: bool
    scale: float
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def _compact(flags):
    """Per row of a bool (rows..., M) tensor: the indices of its True entries first (ascending),
    as int32, and their count."""
    order = torch.argsort((~flags).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return order.contiguous(), flags.sum(dim=-1, dtype=torch.int32).contiguous()


def _tile_selection(bias, block_m):
    """(B*H, n_q_tiles, n_blocks) bool: key blocks that some row of each query tile selected."""
    batch, heads, n_q, n_blocks = bias.shape
    selected = torch.nn.functional.pad(bias > float("-inf"), (0, 0, 0, (-n_q) % block_m), value=False)
    return selected.reshape(batch * heads, -1, block_m, n_blocks).any(dim=2)


def _launch_forward(q, k, v, bias, doc_ids, has_docs, config: _LaunchConfig):
    batch, heads, seq_len, head_dim = q.shape
    n_blocks = bias.shape[-1]
    tiles = _tile_selection(bias, config.block_m)
    tile_list, tile_count = _compact(tiles)
    n_q_tiles = tiles.shape[1]
    out = torch.empty_like(q)
    lse = torch.empty((batch * heads, seq_len), device=q.device, dtype=torch.float32)
    _block_attention_fwd_kernel[(n_q_tiles, batch * heads)](
        q, k, v, bias, out, lse, doc_ids, tile_list, tile_count,
        config.scale, seq_len, n_blocks, n_q_tiles,
        **_constexprs(q, k, has_docs, config))
    return out, lse, tiles, tile_list, tile_count


def _constexprs(q, k, has_docs, config: _LaunchConfig):
    return dict(H=q.shape[1], GROUP=q.shape[1] // k.shape[1], HEAD_DIM=q.shape[3], BLOCK_M=config.block_m,
                BLOCK_N=config.block_n, CAUSAL=config.causal, HAS_DOCS=has_docs,
                DOT_PRECISION=_dot_precision(q.dtype), num_warps=config.num_warps, num_stages=config.num_stages)


def _launch_backward(grad_out, q, k, v, bias, out, lse, doc_ids, has_docs, tiles, tile_list, tile_count,
                     config: _LaunchConfig):
    batch, heads, seq_len, _ = q.shape
    n_q_tiles, n_blocks = tiles.shape[1], tiles.shape[2]
    constexprs = _constexprs(q, k, has_docs, config)
    delta = (grad_out.float() * out.float()).sum(dim=-1).reshape(batch * heads, seq_len).contiguous()
    dq = torch.empty_like(q)
    dbias = torch.zeros_like(bias)  # blocks no tile visits have zero gradient
    _block_attention_bwd_dq_kernel[(n_q_tiles, batch * heads)](
        q, k, v, bias, grad_out, lse, delta, dq, dbias, doc_ids, tile_list, tile_count,
        config.scale, seq_len, n_blocks, n_q_tiles, **constexprs)
    key_list, key_count = _compact(tiles.transpose(1, 2))
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    _block_attention_bwd_dkdv_kernel[(n_blocks, batch * k.shape[1])](
        q, k, v, bias, grad_out, lse, delta, dk, dv, doc_ids, key_list, key_count,
        config.scale, seq_len, n_blocks, n_q_tiles, **constexprs)
    return dq, dk, dv, dbias


class _BlockAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, doc_ids, has_docs, config):
        out, lse, tiles, tile_list, tile_count = _launch_forward(q, k, v, bias, doc_ids, has_docs, config)
        ctx.save_for_backward(q, k, v, bias, out, lse, doc_ids, tiles, tile_list, tile_count)
        ctx.has_docs, ctx.config = has_docs, config
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, bias, out, lse, doc_ids, tiles, tile_list, tile_count = ctx.saved_tensors
        dq, dk, dv, dbias = _launch_backward(grad_out.contiguous(), q, k, v, bias, out, lse, doc_ids,
                                             ctx.has_docs, tiles, tile_list, tile_count, ctx.config)
        return dq, dk, dv, dbias, None, None, None


def _default_block_m(device):
    """Query rows per tile: 64 on a GPU; 16 in the CPU interpreter, where tiles cost per element."""
    return 64 if device.type == "cuda" else 16


def block_attention(q, k, v, bias, *, block_size=64, causal=True, doc_ids=None, scale=None, block_m=None):
    """Triton version of `block_attention_reference`: visits only key blocks with a finite bias.

    q: (B, H, N, D), k/v: (B, H_kv, N, D) in bf16/fp16/fp32 on CUDA (or CPU under
    TRITON_INTERPRET=1); D in {16, 32, 64, 128, 256}; block_size in {16, 32, 64, 128} (one key
    tile = one block). bias: (B, H, N, n_blocks) float, differentiable. block_m: query rows per
    tile (power of two in [16, 128]); a tile reads the union of its rows' selected blocks.
    """
    scale = _check_inputs(q, k, v, causal, scale, doc_ids, block_size, "block_attention")
    batch, heads, n_q, head_dim = q.shape
    if k.shape[2] != n_q:
        raise ValueError(f"block_attention: the Triton path needs Nq == Nk, got {n_q} and {k.shape[2]}; "
                         f"use block_attention_reference (backend='torch') for decoding")
    if q.dtype not in SUPPORTED_DTYPES or not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"block_attention: q, k, v must share one of {SUPPORTED_DTYPES}, got "
                        f"{q.dtype}, {k.dtype}, {v.dtype} (backend='torch' takes float64)")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"block_attention: head_dim must be one of {SUPPORTED_HEAD_DIMS}, got {head_dim}; "
                         f"use backend='torch'")
    if block_size not in TRITON_BLOCK_SIZES:
        raise ValueError(f"block_attention: block_size must be one of {TRITON_BLOCK_SIZES} for the Triton "
                         f"path, got {block_size}; use backend='torch' for other sizes")
    block_m = _default_block_m(q.device) if block_m is None else block_m
    if block_m not in (16, 32, 64, 128):
        raise ValueError(f"block_attention: block_m must be 16, 32, 64 or 128, got {block_m!r}")
    _check_bias(bias, (batch, heads, n_q, triton.cdiv(n_q, block_size)), "block_attention")
    require_runnable_device(q.device, "block_attention")
    on_gpu = q.device.type == "cuda"
    config = _LaunchConfig(causal=causal, scale=scale, block_m=block_m, block_n=block_size,
                           num_warps=4 if on_gpu else 1, num_stages=2 if on_gpu else 1)
    has_docs = doc_ids is not None
    if has_docs:
        doc_ids = document_runs(doc_ids.to(device=q.device))
    else:  # never read (HAS_DOCS is off), but a pointer argument must point at memory
        doc_ids = torch.zeros(1, device=q.device, dtype=torch.int32)
    return _BlockAttentionFunction.apply(q.contiguous(), k.contiguous(), v.contiguous(),
                                         bias.float().contiguous(), doc_ids, has_docs, config)


# ----------------------------------------------------------------------------------------------
# the two attention functions
# ----------------------------------------------------------------------------------------------


def _attend(q, k, v, bias, layout, *, causal, doc_ids, scale, backend, block_m, return_stats):
    if backend == "triton":
        out = block_attention(q, k, v, bias, block_size=layout.block_size, causal=causal, doc_ids=doc_ids,
                              scale=scale, block_m=block_m)
    else:
        out = block_attention_reference(q, k, v, bias, block_size=layout.block_size, causal=causal,
                                        doc_ids=doc_ids, scale=scale)
    if return_stats:
        return out, selection_stats(bias, layout)
    return out


def hierarchical_attention(q, k, v, *, alpha=1.5, block_size=64, causal=True, scale=None, doc_ids=None,
                           return_stats=False, backend="triton", block_m=None):
    """Hierarchical entmax attention (module docstring): alpha-entmax over block summaries chooses a
    variable number of key blocks per query, softmax over their tokens with the weights as a prior.

    q: (B, H, Nq, D); k, v: (B, H_kv, Nk, D), H % H_kv == 0; queries are the last Nq key positions
    (Nq < Nk only with causal=False: decoding). backend "triton" (Nq == Nk; see `block_attention`)
    or "torch" (exact, any dtype and block size). return_stats=True returns (out, stats) with the
    keys of `selection_stats`; "selected_block_fraction" is the fraction of key blocks selected.
    """
    alpha = _check_alpha(alpha, "hierarchical_attention")
    backend = _check_backend(backend, "hierarchical_attention")
    scores, layout = block_scores(q, k, block_size=block_size, causal=causal, doc_ids=doc_ids, scale=scale)
    bias, _ = entmax_block_bias(scores, layout, alpha)
    return _attend(q, k, v, bias, layout, causal=causal, doc_ids=doc_ids, scale=scale, backend=backend,
                   block_m=block_m, return_stats=return_stats)


def topk_block_attention(q, k, v, *, top_k=16, block_size=64, causal=True, scale=None, doc_ids=None,
                         return_stats=False, backend="triton", block_m=None):
    """The fixed-budget baseline: the same block summaries, but each query attends its local block
    plus the top_k best-scoring distant blocks (plain softmax over their tokens, no prior)."""
    backend = _check_backend(backend, "topk_block_attention")
    scores, layout = block_scores(q, k, block_size=block_size, causal=causal, doc_ids=doc_ids, scale=scale)
    bias = topk_block_bias(scores, layout, top_k)
    return _attend(q, k, v, bias, layout, causal=causal, doc_ids=doc_ids, scale=scale, backend=backend,
                   block_m=block_m, return_stats=return_stats)
