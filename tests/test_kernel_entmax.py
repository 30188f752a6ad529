"""Row-wise Triton entmax (kernels.entmax) and the shared tau machinery (kernels._tau).

CUDA when present, otherwise Triton's CPU interpreter (see test_kernel_entmax_attention.py for
why TRITON_INTERPRET must be set before triton is imported).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib  # noqa: E402

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import kernels  # noqa: E402
from kernels import _tau, reference  # noqa: E402

from helpers import exact_threshold, rel_error  # noqa: E402

pytestmark = pytest.mark.usefixtures("kernels_runnable")

attention_module = importlib.import_module("kernels.entmax_attention")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NUM_BINS = attention_module.NUM_BINS


# ----------------------------------------------------------------------------------------------
# kernels.entmax
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0, 1.75])
@pytest.mark.parametrize("shape,dim", [((3, 7, 50), -1), ((200, 6), 0), ((4, 300), 1)])
def test_entmax_matches_reference(gen, alpha, shape, dim):
    x = (torch.randn(*shape, generator=gen) * 3).to(DEVICE).requires_grad_()
    probs = kernels.entmax(x, alpha=alpha, dim=dim)
    grad_probs = torch.randn(probs.shape, generator=gen).to(DEVICE)
    (grad_x,) = torch.autograd.grad(probs, x, grad_probs)

    x64 = x.detach().double().requires_grad_()
    expected = reference.entmax(x64, alpha=alpha, dim=dim)
    (expected_grad,) = torch.autograd.grad(expected, x64, grad_probs.double())
    assert rel_error(probs, expected) <= 1e-5
    assert rel_error(grad_x, expected_grad) <= 1e-4
    assert (probs.double().sum(dim) - 1).abs().max().item() <= 1e-5


def test_entmax_matches_entmax_package(gen):
    entmax_package = pytest.importorskip("entmax")
    x = torch.randn(20, 64, generator=gen, dtype=torch.float64) * 2
    assert rel_error(kernels.entmax(x.float().to(DEVICE), alpha=1.5), entmax_package.entmax15(x, dim=-1)) <= 1e-5
    assert rel_error(kernels.entmax(x.float().to(DEVICE), alpha=2.0), entmax_package.sparsemax(x, dim=-1)) <= 1e-5


def test_entmax_large_logits_and_masked_entries(gen):
    x = torch.randn(16, 40, generator=gen) * 100
    x[3, 5:] = float("-inf")
    x[7] = float("-inf")  # a fully masked row gives zeros, not NaN
    probs = kernels.entmax(x.to(DEVICE), alpha=1.5)
    assert torch.isfinite(probs).all()
    assert probs[7].abs().sum().item() == 0
    assert (probs[3, 5:] == 0).all()
    keep = torch.ones(16, dtype=torch.bool)
    keep[7] = False
    expected = reference.entmax(x[keep].double(), alpha=1.5)
    assert rel_error(probs[keep], expected) <= 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_entmax_half_precision(gen, dtype):
    x = (torch.randn(8, 100, generator=gen) * 3).to(DEVICE, dtype)
    probs = kernels.entmax(x, alpha=1.5)
    assert probs.dtype == dtype
    assert rel_error(probs, reference.entmax(x.double(), alpha=1.5)) <= 1e-2


@pytest.mark.parametrize("kwargs,error,message", [
    ({"x": torch.randn(3, 4, dtype=torch.float64)}, TypeError, "float64"),
    ({"x": torch.randn(3, 4), "alpha": 0.5}, ValueError, "alpha"),
    ({"x": torch.randn(3, 4), "dim": 2}, ValueError, "dim"),
    ({"x": torch.randn(3, 4), "n_iter": 99}, ValueError, "n_iter"),
    ({"x": torch.randn(3, 4, device="meta")}, RuntimeError, "kernels.reference"),
])
def test_entmax_bad_inputs(kwargs, error, message):
    if kwargs["x"].device.type == "cpu":
        kwargs = {**kwargs, "x": kwargs["x"].to(DEVICE)}
    with pytest.raises(error, match=message):
        kernels.entmax(**kwargs)


# ----------------------------------------------------------------------------------------------
# kernels._tau directly: the histogram bracket holds the exact tau; each step keeps it.
# ----------------------------------------------------------------------------------------------


@triton.jit
def _tau_trace_kernel(Y, Trace, n_cols, power, BLOCK_C: tl.constexpr, NUM_BINS: tl.constexpr,
                      ALPHA_MODE: tl.constexpr, N_ITER: tl.constexpr):
    """For 16 rows of y (already shifted so that max = 1), write (lo, hi, t) after the histogram
    and after every Halley step: Trace[step, 0..2, row]."""
    rows = tl.program_id(0) * 16 + tl.arange(0, 16)
    cols = tl.arange(0, BLOCK_C)
    y = tl.load(Y + rows[:, None] * n_cols + cols[None, :], mask=cols[None, :] < n_cols, other=float("-inf"))
    lo, hi = _tau.bracket_from_histogram(_tau.histogram_rows(y * NUM_BINS, NUM_BINS), power, ALPHA_MODE, NUM_BINS)
    t = 0.5 * (lo + hi)
    n_rows = tl.num_programs(0) * 16
    tl.store(Trace + rows, lo)
    tl.store(Trace + n_rows + rows, hi)
    tl.store(Trace + 2 * n_rows + rows, t)
    for step in tl.static_range(N_ITER):
        u = tl.maximum(y - t[:, None], 0.0)
        mass, slope, curvature = _tau.power_sums(u, power, ALPHA_MODE)
        t, lo, hi = _tau.halley_update(t, lo, hi, mass, slope, curvature)
        base = Trace + (step + 1) * 3 * n_rows
        tl.store(base + rows, lo)
        tl.store(base + n_rows + rows, hi)
        tl.store(base + 2 * n_rows + rows, t)


def _shifted_rows(gen, n_rows, n_cols, alpha):
    """Rows of y = (alpha - 1) x - (max - 1) from a mix of distributions, with exact ties."""
    spreads = torch.tensor([0.3, 1.0, 3.0, 100.0])[torch.arange(n_rows) % 4][:, None]
    x = torch.randn(n_rows, n_cols, generator=gen, dtype=torch.float64) * spreads
    x[1::5] = x[1::5].round()  # ties, and rows whose root sits on the bracket edge
    x[2::7, 1:] = -1e9  # rows whose support is the arg-max alone
    z = (alpha - 1) * x
    return (z - (z.max(dim=-1, keepdim=True).values - 1)).float()


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25, 1.75])
def test_tau_bracket_and_refinement(gen, alpha):
    n_rows, n_cols, n_iter = 64, 100, 4
    y = _shifted_rows(gen, n_rows, n_cols, alpha)
    trace = torch.full((n_iter + 1, 3, n_rows), float("nan"), device=DEVICE)
    _tau_trace_kernel[(n_rows // 16,)](y.to(DEVICE), trace, n_cols, 1 / (alpha - 1), BLOCK_C=128, NUM_BINS=NUM_BINS,
                                       ALPHA_MODE=_tau.alpha_mode(alpha), N_ITER=n_iter)
    trace = trace.double().cpu()
    assert torch.isfinite(trace).all()
    exact = exact_threshold(y, alpha)  # t = tau - (max - 1), y's maxima being 1
    slack = 1e-6  # fp32 rounding of the bracket ends
    lo, hi, _ = trace[0]
    assert (hi - lo <= 1 / NUM_BINS + slack).all(), "the histogram bracket is one bin wide"
    for step in range(n_iter + 1):
        lo, hi, t = trace[step]
        assert (lo <= exact + slack).all() and (exact <= hi + slack).all(), f"bracket lost tau at step {step}"
        assert ((lo - slack <= t) & (t <= hi + slack)).all()
    power = 1 / (alpha - 1)
    residual = [((y.double() - trace[step, 2][:, None]).clamp_min(0) ** power).sum(-1).sub(1).abs()
                for step in range(n_iter + 1)]
    # Halley's steps (cubic) need two from the 8-bin bracket, Newton's for sparsemax three.
    steps = 3 if alpha == 2.0 else 2
    assert residual[steps].max().item() <= 1e-5, f"{steps} steps reach fp32 precision"
    # The kernels stop refining once every row is within _tau.stop_residual of mass 1: one more step
    # from there must reach the error it promises (1e-6 fp32 / 1e-4 for 16-bit inputs; fp32 rounding
    # of these sums is ~4e-7), for every row and step where that holds.
    for low_precision, error in ((False, 1e-6), (True, 1e-4)):
        limit = _tau.stop_residual(alpha, low_precision)
        for step in range(n_iter):
            ready = residual[step] <= limit
            assert (residual[step + 1][ready] <= max(error, 1e-6)).all(), f"stop rule at step {step}, {limit=}"
        if alpha != 2.0:  # sparsemax's Newton is exact once its support is right: residuals jump past
            assert any(((r <= limit) & (r > 1e-5)).any() for r in residual[:-1]), "rule untested"


def test_stop_residual():
    assert _tau.stop_residual(1.5, False) == pytest.approx(2e-3)  # 2 * sqrt(1e-6)
    assert _tau.stop_residual(1.5, True) == pytest.approx(2e-2)  # 2 * sqrt(1e-4), at the cap
    assert _tau.stop_residual(2.0, False) == pytest.approx(1e-6)
    assert _tau.stop_residual(2.0, True) == pytest.approx(1e-4)


@triton.jit
def _histogram_kernel(Y, Counts, n_cols, BLOCK_C: tl.constexpr, NUM_BINS: tl.constexpr):
    rows = tl.arange(0, 16)
    cols = tl.arange(0, BLOCK_C)
    y = tl.load(Y + rows[:, None] * n_cols + cols[None, :], mask=cols[None, :] < n_cols, other=float("-inf"))
    counts = _tau.histogram_rows(y * NUM_BINS, NUM_BINS)
    bins = tl.arange(0, NUM_BINS)
    tl.store(Counts + rows[:, None] * NUM_BINS + bins[None, :], counts)


def test_histogram_counts_each_entry_in_its_bin(gen):
    y = torch.rand(16, 200, generator=gen) * 1.5 - 0.5  # a third below 0 (y <= 1 always: y = z - (max - 1))
    y[0, :3] = torch.tensor([0.0, 1.0, float("-inf")])
    y[1] = 1.0  # a whole row in the top bin: 200 > 128 would not fit one 8-bit counter per tile
    # far below 0: the binning has no lower clamp, these must land in no bin (exact bin edges are
    # left out: there the rounding may pick the lower bin, which the bracket allows)
    y[2, :10] = torch.tensor([-3e38, -1e30, -2e7, -1.3e7, -1e6, -1.0, -1e-7, 0.03, 0.97, 0.51])
    y = y[:, :120]  # ... so keep a tile of at most 255 columns, as the kernels do
    counts = torch.zeros(16, NUM_BINS, dtype=torch.int32, device=DEVICE)
    _histogram_kernel[(1,)](y.to(DEVICE).contiguous(), counts, 120, BLOCK_C=128, NUM_BINS=NUM_BINS)
    inside = (y >= 0) & (y <= 1)
    expected_bins = (y.clamp(0, 1) * NUM_BINS).floor().clamp_max(NUM_BINS - 1).long()
    expected = torch.zeros(16, NUM_BINS, dtype=torch.int64)
    expected.scatter_add_(1, expected_bins, inside.long())
    assert torch.equal(counts.cpu().long(), expected)


@triton.jit
def _support_kernel(Y, Shift, Indicator, Sizes, n_cols, BLOCK_C: tl.constexpr):
    rows = tl.arange(0, 16)
    cols = tl.arange(0, BLOCK_C)
    y = tl.load(Y + rows[:, None] * n_cols + cols[None, :], mask=cols[None, :] < n_cols, other=float("-inf"))
    u = tl.maximum(y - tl.load(Shift + rows)[:, None], 0.0)
    tl.store(Indicator + rows[:, None] * BLOCK_C + cols[None, :], _tau.support_indicator(u))
    tl.store(Sizes + rows, _tau.support_size(u))


def test_support_indicator_and_size_count_the_positive_entries(gen):
    """support_indicator (a saturated multiply) is u > 0 and support_size counts it, across
    magnitudes, with -inf (masked) entries, entries exactly at the threshold and whole rows in or
    out of the support."""
    y = torch.randn(16, 100, generator=gen) * 10.0 ** torch.randint(-30, 30, (16, 1), generator=gen)
    shift = y.median(dim=1).values
    y[0, :4] = torch.tensor([float("-inf"), 1e-30, -1e-30, 3e38])
    shift[0] = 0.0
    y[1] = shift[1]  # every entry at the threshold: u = 0, an empty support
    shift[2] = float("-inf")  # every entry in the support
    y[3, :50] = float("-inf")
    sizes = torch.full((16,), float("nan"), device=DEVICE)
    indicator = torch.full((16, 128), float("nan"), device=DEVICE)
    _support_kernel[(1,)](y.to(DEVICE).contiguous(), shift.to(DEVICE).contiguous(), indicator, sizes, 100,
                          BLOCK_C=128)
    positive = (y - shift[:, None]).clamp_min(0).gt(0)
    assert positive[1].sum() == 0 and positive[2].sum() == 100
    assert torch.equal(indicator.cpu()[:, :100], positive.float())
    assert torch.equal(indicator.cpu()[:, 100:], torch.zeros(16, 28))  # masked columns: u = 0
    assert torch.equal(sizes.cpu(), positive.sum(dim=1).float())


@triton.jit
def _gap_kernel(Z, Threshold, U, n_cols, BLOCK_C: tl.constexpr):
    rows = tl.arange(0, 16)
    cols = tl.arange(0, BLOCK_C)
    z = tl.load(Z + rows[:, None] * n_cols + cols[None, :], mask=cols[None, :] < n_cols, other=float("-inf"))
    tl.store(U + rows[:, None] * BLOCK_C + cols[None, :],
             _tau.gap_below_one(z * 0.5 - tl.load(Threshold + rows)[:, None]))


def test_gap_below_one_is_the_positive_part_for_thresholds_at_least_max_minus_one(gen):
    """gap_below_one (a clamp to [0, 1], one saturated multiply-add on the GPU) is [z - t]_+
    wherever t >= max(z) - 1, as for every threshold the kernels take a gap against: across
    magnitudes, with -inf (masked) entries, t exactly max - 1 (u = 1) and t = +inf (padding rows)."""
    z = torch.randn(16, 100, generator=gen) * 10.0 ** torch.randint(-6, 6, (16, 1), generator=gen)
    z[3, :50] = float("-inf")
    half_max = z.max(dim=1).values * 0.5
    threshold = half_max - 1.0 + torch.rand(16, generator=gen)  # t in [max - 1, max)
    threshold[0] = half_max[0] - 1.0
    threshold[1] = float("inf")
    u = torch.full((16, 128), float("nan"), device=DEVICE)
    _gap_kernel[(1,)](z.to(DEVICE).contiguous(), threshold.to(DEVICE).contiguous(), u, 100, BLOCK_C=128)
    expected = (z * 0.5 - threshold[:, None]).clamp_min(0)
    assert expected.max() <= 1 and expected[0].max() == 1 and expected[1].max() == 0
    assert torch.equal(u.cpu()[:, :100], expected)
    assert torch.equal(u.cpu()[:, 100:], torch.zeros(16, 28))


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.75])
def test_entmax_near_uniform_rows_sum_to_one(alpha):
    x = (torch.randn(2, 4000, generator=torch.Generator().manual_seed(1)) * 1e-3).to(DEVICE)
    p = kernels.entmax(x, alpha=alpha)
    assert (p.double().sum(-1) - 1).abs().max().item() <= 1e-4
    assert rel_error(p, reference.entmax(x.double(), alpha=alpha)) < 1e-4
