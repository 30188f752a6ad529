"""Row-wise alpha-entmax over a dense tensor (Triton), with the same threshold machinery as the
fused attention kernel (kernels/_tau.py): row max, histogram bracket, safeguarded Halley steps.

p = [(alpha - 1) x - tau]_+ ** (1 / (alpha - 1)) along `dim`, with sum(p) = 1. The backward is
the closed-form entmax Jacobian-vector product, dx = g * (dp - sum(g dp) / sum(g)) with
g = p ** (2 - alpha), done in PyTorch from the saved probabilities.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _tau
from .entmax_attention import NUM_BINS, _check_alpha, _check_n_iter, require_runnable_device

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# Rows per program: the histogram bracket solves one [rows, bins] x [bins, bins] product, and
# matrix products need at least 16 rows.
_BLOCK_ROWS = 16
# Columns per tile; at most 255 so the packed 8-bit histogram counters cannot overflow.
_MAX_BLOCK_COLS = 128


@triton.jit
def _load_scores(X_rows, row_ok, cols, n_cols, alpha_minus_one):
    """z = (alpha - 1) * x for one [rows, cols] tile, -inf outside the matrix."""
    inside = row_ok[:, None] & (cols[None, :] < n_cols)
    x = tl.load(X_rows + cols[None, :], mask=inside, other=float("-inf")).to(tl.float32)
    return x * alpha_minus_one


@triton.jit
def _entmax_rows_kernel(X, P, n_rows, n_cols, alpha_minus_one, power, stop_residual,
                        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, NUM_BINS: tl.constexpr,
                        ALPHA_MODE: tl.constexpr, N_ITER: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    row_offsets = rows.to(tl.int64)[:, None] * n_cols
    X_rows = X + row_offsets

    row_max = tl.full([BLOCK_R], float("-inf"), tl.float32)
    for col_begin in range(0, n_cols, BLOCK_C):
        z = _load_scores(X_rows, row_ok, col_begin + tl.arange(0, BLOCK_C), n_cols, alpha_minus_one)
        row_max = tl.maximum(row_max, tl.max(z, axis=1))
    # Rows that are entirely -inf get shift = +inf: all y = -inf, p = 0, no NaN.
    shift = tl.where(row_max > float("-inf"), row_max - 1.0, float("inf"))

    counts = tl.zeros([BLOCK_R, NUM_BINS], dtype=tl.int32)
    for col_begin in range(0, n_cols, BLOCK_C):
        z = _load_scores(X_rows, row_ok, col_begin + tl.arange(0, BLOCK_C), n_cols, alpha_minus_one)
        counts += _tau.histogram_rows((z - shift[:, None]) * NUM_BINS, NUM_BINS)
    lo, hi = _tau.bracket_from_histogram(counts, power, ALPHA_MODE, NUM_BINS)
    t = 0.5 * (lo + hi)

    # As in the attention kernel: passes after the one that found every row converged are skipped.
    solving = row_ok & (shift < float("inf"))
    converged = tl.zeros([], dtype=tl.int32)
    for _ in tl.static_range(N_ITER):
        if converged == 0:
            mass = tl.zeros([BLOCK_R], dtype=tl.float32)
            slope = tl.zeros([BLOCK_R], dtype=tl.float32)
            curvature = tl.zeros([BLOCK_R], dtype=tl.float32)
            for col_begin in range(0, n_cols, BLOCK_C):
                z = _load_scores(X_rows, row_ok, col_begin + tl.arange(0, BLOCK_C), n_cols, alpha_minus_one)
                u = _tau.gap_below_one(z - shift[:, None] - t[:, None])
                tile_mass, tile_slope, tile_curvature = _tau.power_sums(u, power, ALPHA_MODE)
                mass += tile_mass
                slope += tile_slope
                curvature += tile_curvature
            converged = _tau.all_converged(mass, solving, stop_residual).to(tl.int32)
            t, lo, hi = _tau.halley_update(t, lo, hi, mass, slope, curvature)

    tau = shift + t
    P_rows = P + row_offsets
    for col_begin in range(0, n_cols, BLOCK_C):
        cols = col_begin + tl.arange(0, BLOCK_C)
        z = _load_scores(X_rows, row_ok, cols, n_cols, alpha_minus_one)
        p = _tau.probability(_tau.gap_below_one(z - tau[:, None]), power, ALPHA_MODE)
        tl.store(P_rows + cols[None, :], p.to(P.dtype.element_ty),
                 mask=row_ok[:, None] & (cols[None, :] < n_cols))


def _entmax_last_dim(x: torch.Tensor, alpha: float, n_iter: int) -> torch.Tensor:
    x2d = x.reshape(-1, x.shape[-1]).contiguous()
    n_rows, n_cols = x2d.shape
    probs = torch.empty_like(x2d)
    if n_rows == 0:
        return probs.reshape(x.shape)
    block_cols = min(_MAX_BLOCK_COLS, max(16, triton.next_power_of_2(n_cols)))
    _entmax_rows_kernel[(triton.cdiv(n_rows, _BLOCK_ROWS),)](
        x2d, probs, n_rows, n_cols, alpha - 1.0, 1.0 / (alpha - 1.0),
        _tau.stop_residual(alpha, x2d.dtype != torch.float32),
        BLOCK_R=_BLOCK_ROWS, BLOCK_C=block_cols, NUM_BINS=NUM_BINS,
        ALPHA_MODE=_tau.alpha_mode(alpha), N_ITER=n_iter,
    )
    return probs.reshape(x.shape)


def _entmax_gradient_weight(probs: torch.Tensor, alpha: float) -> torch.Tensor:
    """g = p ** (2 - alpha) on the support, zero elsewhere."""
    if alpha == 1.5:
        return probs.sqrt()
    if alpha == 2.0:
        return (probs > 0).to(probs.dtype)
    return torch.where(probs > 0, probs.clamp_min(torch.finfo(probs.dtype).tiny) ** (2.0 - alpha), 0.0)


class _EntmaxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, n_iter):
        probs = _entmax_last_dim(x, alpha, n_iter)
        ctx.save_for_backward(probs)
        ctx.alpha = alpha
        return probs

    @staticmethod
    def backward(ctx, grad_probs):
        (probs,) = ctx.saved_tensors
        p32 = probs.float()
        g = _entmax_gradient_weight(p32, ctx.alpha)
        g_dp = g * grad_probs.float()
        g_sum = g.sum(dim=-1, keepdim=True)
        delta = g_dp.sum(dim=-1, keepdim=True) / torch.where(g_sum > 0, g_sum, 1.0)
        grad_x = g_dp - g * delta
        return grad_x.to(probs.dtype), None, None


def entmax(x: torch.Tensor, alpha: float = 1.5, dim: int = -1, n_iter: int | None = None) -> torch.Tensor:
    """Differentiable row-wise alpha-entmax along `dim` (Triton forward).

    Args:
        x: bf16, fp16 or fp32 tensor on a CUDA device (CPU under TRITON_INTERPRET=1); -inf entries
            get probability 0, and rows that are entirely -inf give all zeros.
        alpha: in (1, 2]; 1.5 and 2 (sparsemax) are the fast paths.
        dim: the dimension that sums to one.
        n_iter: refinement passes after the histogram bracket (0 to 10); None: 3 for alpha = 1.5,
            else 6, which reach fp32 rounding even for near-uniform rows.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"entmax: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"entmax: x has dtype {x.dtype}; supported: bfloat16, float16, float32 "
                        f"(use kernels.reference.entmax for float64)")
    if x.dim() == 0:
        raise ValueError("entmax: x must have at least one dimension")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"entmax: dim must be an int in [{-x.dim()}, {x.dim() - 1}], got {dim!r}")
    alpha = _check_alpha(alpha, "entmax")
    n_iter = _check_n_iter(n_iter, alpha, "entmax")
    require_runnable_device(x.device, "entmax")
    if x.shape[dim] == 0:
        return x.clone()
    moved = x.movedim(dim, -1)
    probs = _EntmaxFunction.apply(moved, alpha, n_iter)
    return probs.movedim(-1, dim)
