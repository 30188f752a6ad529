"""Exact pure-PyTorch references for alpha-entmax and alpha-entmax attention.

These are the ground truth that the Triton kernels are tested against, and the CPU fallback of
the training framework. They run on any device and in any float dtype (float64 included).

Conventions (ARCHITECTURE.md section 4):
    z = (alpha - 1) * x,  p = [z - tau]_+ ^ (1 / (alpha - 1)),  tau such that sum(p) = 1.
This is the same map as `entmax.sparsemax` (alpha = 2), `entmax.entmax15` (alpha = 1.5) and
`entmax.entmax_bisect` (any alpha) from the `entmax` package.

Exactness:
    alpha = 2 and alpha = 1.5 use the sort-based closed form for tau; any other alpha bisects tau
    until the bracket stops shrinking in the working dtype. Either way, entries with
    z < max(z) - 1 are exactly zero (the arg-max alone already contributes 1 at tau = max - 1), so
    they are dropped before solving: the closed forms then only see values in [-1, 0] after the
    max shift, which keeps their cumulative sums well conditioned even for huge logits.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch.utils.checkpoint import checkpoint

__all__ = [
    "entmax",
    "entmax_attention",
    "entmax_attention_probs",
    "allowed_mask",
    "block_sparsity",
    "sampled_block_sparsity",
]

# Scores materialized per query chunk: B * H * rows * Nk elements at most (about 64 MiB in float32).
DEFAULT_SCORE_ELEMENTS = 1 << 24


# ----------------------------------------------------------------------------------------------
# alpha-entmax over the last dimension
# ----------------------------------------------------------------------------------------------


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, Real):
        raise TypeError(f"alpha must be a real number in (1, 2], got {type(alpha).__name__}")
    alpha = float(alpha)
    if not (1.0 < alpha <= 2.0):
        raise ValueError(
            f"alpha must lie in (1, 2], got {alpha}; use softmax for alpha = 1 and sparsemax for 2"
        )
    return alpha


def _working_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other float dtype is solved in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _shifted_candidates(z: torch.Tensor) -> torch.Tensor:
    """z - rowmax(z), with every entry that is provably zero (below -1) set to -inf.

    Rows that are entirely -inf stay entirely -inf (no NaN from -inf - -inf).
    """
    row_max = z.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    shifted = z - row_max
    return shifted.masked_fill(shifted < -1.0, float("-inf"))


def _tau_sparsemax(zs_sorted: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Closed-form threshold for alpha = 2 from values sorted in descending order."""
    values = torch.where(valid, zs_sorted, torch.zeros_like(zs_sorted))
    rank = torch.arange(1, values.shape[-1] + 1, device=values.device, dtype=values.dtype)
    cumsum = values.cumsum(dim=-1)
    in_support = valid & (1.0 + rank * values > cumsum)
    support_size = in_support.sum(dim=-1, keepdim=True).clamp_min(1)
    return (cumsum.gather(-1, support_size - 1) - 1.0) / support_size.to(values.dtype)


def _tau_entmax15(zs_sorted: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Closed-form threshold for alpha = 1.5 (Peters et al., 2019) from descending values.

    For a support of the k largest values, sum((z - tau)^2) = 1 is a quadratic in tau whose
    larger-gap root is mean - sqrt((1 - k * variance) / k); the true support is the largest k
    whose root still lies below the k-th value.
    """
    values = torch.where(valid, zs_sorted, torch.zeros_like(zs_sorted))
    rank = torch.arange(1, values.shape[-1] + 1, device=values.device, dtype=values.dtype)
    mean = values.cumsum(dim=-1) / rank
    mean_sq = (values * values).cumsum(dim=-1) / rank
    sum_sq_dev = rank * (mean_sq - mean * mean)
    delta = ((1.0 - sum_sq_dev) / rank).clamp_min(0.0)
    tau_k = mean - delta.sqrt()
    in_support = valid & (tau_k <= values)
    support_size = in_support.sum(dim=-1, keepdim=True).clamp_min(1)
    return tau_k.gather(-1, support_size - 1)


def _probs_bisect(zs: torch.Tensor, alpha: float) -> torch.Tensor:
    """General alpha: bisection on tau in [-1, -(1/d)^(alpha-1)] (row max already shifted to 0).

    At tau = -1 the arg-max alone gives mass >= 1; at tau = -(1/d)^(alpha-1) each of the d finite
    entries gives at most 1/d. The bracket is at most 1 wide, so mantissa-bits + 4 halvings (56 in
    float64, 27 in float32) shrink it below the dtype's resolution; the tiny remaining sum error
    is removed by normalization.
    """
    power = 1.0 / (alpha - 1.0)
    n_finite = torch.isfinite(zs).sum(dim=-1, keepdim=True).clamp_min(1).to(zs.dtype)
    tau_lo = torch.full_like(n_finite, -1.0)
    tau_hi = -(1.0 / n_finite) ** (alpha - 1.0)
    n_halvings = round(-math.log2(torch.finfo(zs.dtype).eps)) + 4
    for _ in range(n_halvings):
        tau_mid = 0.5 * (tau_lo + tau_hi)
        mass = ((zs - tau_mid).clamp_min(0.0) ** power).sum(dim=-1, keepdim=True)
        enough = mass >= 1.0
        tau_lo = torch.where(enough, tau_mid, tau_lo)
        tau_hi = torch.where(enough, tau_hi, tau_mid)
    probs = (zs - tau_lo).clamp_min(0.0) ** power
    total = probs.sum(dim=-1, keepdim=True)
    return probs / torch.where(total > 0, total, torch.ones_like(total))


def _entmax_last_dim(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Forward of alpha-entmax over the last dim, in x's (working) dtype, no autograd."""
    if x.shape[-1] == 0:
        return x.clone()
    zs = _shifted_candidates((alpha - 1.0) * x)
    if alpha not in (1.5, 2.0):
        return _probs_bisect(zs, alpha)
    # Only candidates (finite after the shift) can be in the support; sorting just the widest
    # row's candidates keeps long sparse rows cheap and gives the same threshold.
    n_candidates = int(torch.isfinite(zs).sum(dim=-1).max()) if zs.numel() else 1
    zs_sorted, _ = torch.topk(zs, k=max(1, n_candidates), dim=-1, sorted=True)
    valid = torch.isfinite(zs_sorted)
    if alpha == 2.0:
        return (zs - _tau_sparsemax(zs_sorted, valid)).clamp_min(0.0)
    return (zs - _tau_entmax15(zs_sorted, valid)).clamp_min(0.0) ** 2


class _EntmaxFunction(torch.autograd.Function):
    """alpha-entmax over the last dim with the closed-form Jacobian-vector product.

    With g = p^(2 - alpha) on the support (0 elsewhere), the Jacobian of p w.r.t. x is
    diag(g) - g g^T / sum(g); the (alpha - 1) factors of z and of the power cancel, which matches
    the backward of the `entmax` package.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        probs = _entmax_last_dim(x.to(_working_dtype(x.dtype)), alpha)
        ctx.alpha = alpha
        ctx.input_dtype = x.dtype
        ctx.save_for_backward(probs)
        return probs.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_probs: torch.Tensor):
        (probs,) = ctx.saved_tensors
        grad_probs = grad_probs.to(probs.dtype)
        if ctx.alpha == 2.0:
            g = (probs > 0).to(probs.dtype)
        elif ctx.alpha == 1.5:
            g = probs.sqrt()
        else:
            g = torch.where(probs > 0, probs ** (2.0 - ctx.alpha), torch.zeros_like(probs))
        g_sum = g.sum(dim=-1, keepdim=True)
        # Rows with no support (entirely -inf) have g = 0 everywhere: their gradient is 0, not NaN.
        mean_grad = (g * grad_probs).sum(dim=-1, keepdim=True) / torch.where(
            g_sum > 0, g_sum, torch.ones_like(g_sum)
        )
        grad_x = g * (grad_probs - mean_grad)
        return grad_x.to(ctx.input_dtype), None


def entmax(x: torch.Tensor, alpha: float = 1.5, dim: int = -1) -> torch.Tensor:
    """Exact, differentiable alpha-entmax of ``x`` along ``dim``.

    Computed in float32 (float64 for float64 input) and returned in ``x``'s dtype. -inf entries get
    probability 0 and gradient 0; a slice that is entirely -inf gives all zeros, never NaN.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must have a floating dtype, got {x.dtype}; cast it with x.float()")
    alpha = _check_alpha(alpha)
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension to normalize over")
    moved = x.movedim(dim, -1)
    return _EntmaxFunction.apply(moved, alpha).movedim(-1, dim)


# ----------------------------------------------------------------------------------------------
# masks and block sparsity
# ----------------------------------------------------------------------------------------------


def allowed_mask(
    n_q: int,
    n_k: int,
    *,
    causal: bool,
    doc_ids: torch.Tensor | None = None,
    q_offset: int = 0,
    k_len: int | None = None,
    device=None,
) -> torch.Tensor | None:
    """Boolean mask of query-key pairs a query may attend to, or None when all are allowed.

    Shape (B or 1, 1, n_q, k_len) for query rows [q_offset, q_offset + n_q) and keys [0, k_len)
    (k_len defaults to n_k). Causal: query i sees key j <= i. doc_ids: query i sees key j only
    if doc_ids[b, i] == doc_ids[b, j].
    """
    k_len = n_k if k_len is None else k_len
    if doc_ids is not None:
        device = doc_ids.device
    mask = None
    if causal:
        rows = torch.arange(q_offset, q_offset + n_q, device=device)
        cols = torch.arange(k_len, device=device)
        mask = (cols[None, :] <= rows[:, None])[None, None]
    if doc_ids is not None:
        q_docs = doc_ids[:, q_offset : q_offset + n_q]
        k_docs = doc_ids[:, :k_len]
        same_doc = (q_docs[:, :, None] == k_docs[:, None, :])[:, None]
        mask = same_doc if mask is None else mask & same_doc
    return mask


def _tile_any(flags: torch.Tensor, row_offset: int, block_m: int, block_n: int) -> torch.Tensor:
    """OR-reduce a (..., rows, cols) bool tensor over (block_m x block_n) tiles of the global grid.

    ``row_offset`` is the global index of the first row, so chunks that start mid-tile land in the
    right tile row. Returns (..., tile rows touched, ceil(cols / block_n)).
    """
    rows, cols = flags.shape[-2:]
    pad_top = row_offset % block_m
    pad_bottom = (-(pad_top + rows)) % block_m
    pad_right = (-cols) % block_n
    padded = torch.nn.functional.pad(flags, (0, pad_right, pad_top, pad_bottom), value=False)
    tiles_m = padded.shape[-2] // block_m
    tiles_n = padded.shape[-1] // block_n
    tiled = padded.reshape(*padded.shape[:-2], tiles_m, block_m, tiles_n, block_n)
    return tiled.any(dim=-1).any(dim=-2)


def _check_block(block_m: int, block_n: int) -> None:
    for name, value in (("block_m", block_m), ("block_n", block_n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def block_sparsity(
    probs_or_nonzero: torch.Tensor,
    allowed: torch.Tensor | None = None,
    *,
    block_m: int = 64,
    block_n: int = 64,
) -> float:
    """Fraction of allowed (block_m x block_n) tiles whose probabilities are all zero.

    ``probs_or_nonzero``: (..., Nq, Nk) probabilities, or a bool tensor marking non-zeros.
    ``allowed``: bool tensor broadcastable to it (see `allowed_mask`); None means every entry is
    allowed. A tile counts when at least one of its entries is allowed (the same definition the
    Triton kernel reports). Returns 0.0 when no tile is allowed.
    """
    _check_block(block_m, block_n)
    if probs_or_nonzero.dim() < 2:
        raise ValueError("probs_or_nonzero must have shape (..., Nq, Nk)")
    nonzero = probs_or_nonzero if probs_or_nonzero.dtype == torch.bool else probs_or_nonzero != 0
    if allowed is None:
        allowed = torch.ones_like(nonzero)
    allowed = allowed.expand_as(nonzero)
    allowed_tiles = _tile_any(allowed, 0, block_m, block_n)
    nonzero_tiles = _tile_any(nonzero & allowed, 0, block_m, block_n)
    return _zero_tile_fraction(allowed_tiles, nonzero_tiles)


def _zero_tile_fraction(allowed_tiles: torch.Tensor, nonzero_tiles: torch.Tensor) -> float:
    n_allowed = int(allowed_tiles.sum())
    if n_allowed == 0:
        return 0.0
    return float(n_allowed - int((nonzero_tiles & allowed_tiles).sum())) / n_allowed


# ----------------------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------------------


def _validate_attention_inputs(q, k, v, alpha, causal, scale, doc_ids):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, N, D), got {tuple(t.shape)}")
    batch, n_heads, n_q, head_dim = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != batch:
        raise ValueError(f"k batch size {k.shape[0]} differs from q batch size {batch}")
    if k.shape[-1] != head_dim:
        raise ValueError(f"k head dim {k.shape[-1]} differs from q head dim {head_dim}")
    n_kv_heads, n_k = k.shape[1], k.shape[2]
    if n_kv_heads < 1 or n_heads % n_kv_heads != 0:
        raise ValueError(
            f"q heads ({n_heads}) must be a multiple of k/v heads ({n_kv_heads}) for grouped-query attention"
        )
    if n_q < 1 or n_k < 1:
        raise ValueError(f"q and k need at least one position, got Nq={n_q}, Nk={n_k}")
    alpha = _check_alpha(alpha)
    if causal and n_q != n_k:
        raise ValueError(
            f"causal=True needs as many queries as keys, got Nq={n_q}, Nk={n_k}; "
            "pass causal=False for decoding one query against a KV cache"
        )
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, Real)):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    if doc_ids is not None:
        if not isinstance(doc_ids, torch.Tensor) or doc_ids.is_floating_point() or doc_ids.is_complex():
            raise TypeError("doc_ids must be an integer torch.Tensor of shape (B, N)")
        if doc_ids.shape != (batch, n_q):
            raise ValueError(f"doc_ids must have shape (B, N) = {(batch, n_q)}, got {tuple(doc_ids.shape)}")
        if n_q != n_k:
            raise ValueError(f"doc_ids needs as many queries as keys, got Nq={n_q}, Nk={n_k}")
        if doc_ids.shape[1] > 1 and bool((doc_ids[:, 1:] < doc_ids[:, :-1]).any()):
            raise ValueError("doc_ids must be non-decreasing along N (documents are packed contiguously)")
    return alpha


def _grouped_scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * q k^T with query head h reading kv head h // (H // H_kv), without copying k."""
    batch, n_heads, n_q, head_dim = q.shape
    n_kv_heads = k.shape[1]
    grouped_q = q.reshape(batch, n_kv_heads, n_heads // n_kv_heads, n_q, head_dim)
    scores = grouped_q @ k.unsqueeze(2).transpose(-1, -2)
    return scale * scores.reshape(batch, n_heads, n_q, k.shape[2])


def _grouped_output(probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    batch, n_heads, n_q, n_k = probs.shape
    n_kv_heads = v.shape[1]
    grouped_p = probs.reshape(batch, n_kv_heads, n_heads // n_kv_heads, n_q, n_k)
    out = grouped_p @ v.unsqueeze(2)
    return out.reshape(batch, n_heads, n_q, v.shape[-1])


def _chunk_probs(q_chunk, k, alpha, scale, mask):
    scores = _grouped_scores(q_chunk, k, scale)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return entmax(scores, alpha=alpha, dim=-1)


def _attend_chunk(q_chunk, k, v, alpha, scale, mask):
    probs = _chunk_probs(q_chunk, k, alpha, scale, mask)
    return _grouped_output(probs, v), probs


def _default_chunk_rows(batch: int, n_heads: int, n_q: int, n_k: int) -> int:
    rows = DEFAULT_SCORE_ELEMENTS // max(1, batch * n_heads * n_k)
    if rows >= 64:
        rows -= rows % 64  # whole 64-row tiles keep chunk borders on tile borders
    return max(1, min(n_q, rows))


class _StatsAccumulator:
    """Counts zero entries and zero (block_m x block_n) tiles over the allowed region, chunk by chunk."""

    def __init__(self, batch, n_heads, n_q, n_k, block_m, block_n, device):
        tiles_shape = (batch, n_heads, math.ceil(n_q / block_m), math.ceil(n_k / block_n))
        self.allowed_tiles = torch.zeros(tiles_shape, dtype=torch.bool, device=device)
        self.nonzero_tiles = torch.zeros(tiles_shape, dtype=torch.bool, device=device)
        self.allowed_entries = 0
        self.zero_entries = 0
        self.block_m, self.block_n = block_m, block_n

    @torch.no_grad()
    def add(self, probs: torch.Tensor, mask: torch.Tensor | None, row_offset: int) -> None:
        allowed = torch.ones_like(probs, dtype=torch.bool) if mask is None else mask.expand_as(probs)
        nonzero = (probs != 0) & allowed
        self.allowed_entries += int(allowed.sum())
        self.zero_entries += int(allowed.sum()) - int(nonzero.sum())
        first_tile = row_offset // self.block_m
        for target, flags in ((self.allowed_tiles, allowed), (self.nonzero_tiles, nonzero)):
            tiles = _tile_any(flags, row_offset, self.block_m, self.block_n)
            region = target[:, :, first_tile : first_tile + tiles.shape[-2], : tiles.shape[-1]]
            region |= tiles

    def result(self) -> dict:
        sparsity = self.zero_entries / self.allowed_entries if self.allowed_entries else 0.0
        return {
            "sparsity": float(sparsity),
            "block_sparsity": _zero_tile_fraction(self.allowed_tiles, self.nonzero_tiles),
        }


def entmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    alpha: float = 1.5,
    causal: bool = True,
    scale: float | None = None,
    doc_ids: torch.Tensor | None = None,
    n_iter: int | None = None,
    return_stats: bool = False,
    chunk_size: int | None = None,
    block_m: int = 64,
    block_n: int = 64,
):
    """Exact alpha-entmax attention: out = entmax(scale * q k^T + mask) v.

    q: (B, H, Nq, D); k, v: (B, H_kv, Nk, D) with H % H_kv == 0. Computed in float32 (float64 for
    float64 inputs) and returned in q's dtype. ``n_iter`` is accepted for signature compatibility
    with the Triton kernel and ignored (this reference is exact).

    Memory: query rows are processed in chunks of ``chunk_size`` rows (default: as many as keep one
    chunk's scores near 16M elements), and for causal attention a chunk only scores the keys up to
    its last row. When gradients are needed each chunk runs under torch.utils.checkpoint, so the
    backward recomputes one chunk at a time and never holds more than one chunk's scores and
    entmax intermediates; this keeps a 4k-token CPU training step bounded without a second,
    hand-written backward that would itself need testing (the entmax Function's backward is
    already checked against the `entmax` package).

    ``return_stats=True`` returns (out, stats): "sparsity" is the fraction of allowed query-key
    entries whose probability is exactly 0; "block_sparsity" the fraction of allowed
    (block_m x block_n) tiles whose probabilities are all 0 (see `block_sparsity`).
    """
    del n_iter  # exact reference: nothing to iterate
    alpha = _validate_attention_inputs(q, k, v, alpha, causal, scale, doc_ids)
    _check_block(block_m, block_n)
    batch, n_heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    if chunk_size is None:
        chunk_size = _default_chunk_rows(batch, n_heads, n_q, n_k)
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)

    work_dtype = _working_dtype(q.dtype)
    qw, kw, vw = (t.to(work_dtype) for t in (q, k, v))
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    stats = (
        _StatsAccumulator(batch, n_heads, n_q, n_k, block_m, block_n, q.device) if return_stats else None
    )

    outputs = []
    for start in range(0, n_q, chunk_size):
        stop = min(n_q, start + chunk_size)
        # Causal: keys after the chunk's last row are masked for every row of the chunk.
        k_len = stop if causal else n_k
        mask = allowed_mask(
            stop - start, n_k, causal=causal, doc_ids=doc_ids, q_offset=start, k_len=k_len, device=q.device
        )
        args = (qw[:, :, start:stop], kw[:, :, :k_len], vw[:, :, :k_len], alpha, scale, mask)
        if needs_grad and chunk_size < n_q:
            # several chunks: recompute each in backward rather than keep every chunk's probabilities
            out_chunk, probs = checkpoint(_attend_chunk, *args, use_reentrant=False)
        else:
            out_chunk, probs = _attend_chunk(*args)
        if stats is not None:
            stats.add(probs.detach(), mask, start)
        del probs
        outputs.append(out_chunk)

    out = torch.cat(outputs, dim=2).to(q.dtype)
    if return_stats:
        return out, stats.result()
    return out


@torch.no_grad()
def sampled_block_sparsity(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    alpha: float = 1.5,
    causal: bool = True,
    scale: float | None = None,
    doc_ids: torch.Tensor | None = None,
    n_row_tiles: int = 16,
    block_m: int = 64,
    block_n: int = 64,
) -> float:
    """Block sparsity estimated from ``n_row_tiles`` evenly spaced query tiles (long sequences).

    Each sampled tile of ``block_m`` query rows is solved exactly against all the keys it may see;
    zero and allowed tiles are summed over the sample, so the ratio weights every row tile by its
    number of allowed key tiles, as the full count does. With n_row_tiles >= ceil(Nq / block_m)
    the result equals `block_sparsity` of the full probabilities.
    """
    alpha = _validate_attention_inputs(q, k, k, alpha, causal, scale, doc_ids)
    _check_block(block_m, block_n)
    if isinstance(n_row_tiles, bool) or not isinstance(n_row_tiles, int) or n_row_tiles < 1:
        raise ValueError(f"n_row_tiles must be a positive int, got {n_row_tiles!r}")
    n_q, n_k, head_dim = q.shape[2], k.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    work_dtype = _working_dtype(q.dtype)
    total_tiles = math.ceil(n_q / block_m)
    picked = torch.linspace(0, total_tiles - 1, min(n_row_tiles, total_tiles)).round().long().unique()
    allowed_count = zero_count = 0
    for tile in picked.tolist():
        start, stop = tile * block_m, min(n_q, (tile + 1) * block_m)
        k_len = stop if causal else n_k
        mask = allowed_mask(
            stop - start, n_k, causal=causal, doc_ids=doc_ids, q_offset=start, k_len=k_len, device=q.device
        )
        probs = _chunk_probs(q[:, :, start:stop].to(work_dtype), k[:, :, :k_len].to(work_dtype), alpha, scale, mask)
        allowed = torch.ones_like(probs, dtype=torch.bool) if mask is None else mask.expand_as(probs)
        allowed_tiles = _tile_any(allowed, 0, block_m, block_n)
        nonzero_tiles = _tile_any((probs != 0) & allowed, 0, block_m, block_n)
        allowed_count += int(allowed_tiles.sum())
        zero_count += int((allowed_tiles & ~nonzero_tiles).sum())
    return zero_count / allowed_count if allowed_count else 0.0


def entmax_attention_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    alpha: float = 1.5,
    causal: bool = True,
    scale: float | None = None,
    doc_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Full (B, H, Nq, Nk) attention probabilities in the working dtype (small sizes only)."""
    alpha = _validate_attention_inputs(q, k, k, alpha, causal, scale, doc_ids)
    head_dim = q.shape[-1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    work_dtype = _working_dtype(q.dtype)
    mask = allowed_mask(q.shape[2], k.shape[2], causal=causal, doc_ids=doc_ids, device=q.device)
    return _chunk_probs(q.to(work_dtype), k.to(work_dtype), alpha, scale, mask)
