"""Triton helpers for the alpha-entmax threshold tau, shared by the fused attention kernel and the
row-wise entmax kernel.

Notation (ARCHITECTURE.md section 4): z = (alpha - 1) * score, p = [z - tau]_+ ** power with
power = 1 / (alpha - 1), and tau is the unique value with sum(p) = 1. Every helper works row by row
on a 2-D tile whose rows are independent problems.

The solver is written in the shifted variable y = z - (rowmax - 1), in which the threshold
t = tau - (rowmax - 1) always lies in [0, 1): the arg-max alone has y = 1 and p = 1 at t = 0.
Elements with y < 0 can never be in the support, so only y in [0, 1] matters.

1. `histogram_rows` bins y in [0, 1] into NUM_BINS bins per row (given y * NUM_BINS).
2. `bracket_from_histogram` places every element at its bin's lower edge, which can only lower
   the mass, so the root of that approximation is a lower bound of t, and the same root shifted
   up by one bin width is an upper bound: a bracket [lo, hi] of width 1 / NUM_BINS.
3. `halley_update` takes one step from the sums of `power_sums` at the current guess, keeping the
   bracket valid and falling back to bisection when a step leaves it.

ALPHA_MODE (a constexpr, see `alpha_mode`): 1 for alpha = 1.5 (p = u^2, no exp or log), 2 for
alpha = 2 (sparsemax, p = u), 0 for any other alpha in (1, 2) (powers through exp2/log2).
"""

import triton
import triton.language as tl

# Bisection steps used to solve the histogram approximation for general alpha; the segment they
# search is one bin wide, so 20 halvings leave it about 6e-8 / (bins / 16) wide.
_GENERAL_ALPHA_BISECTION_STEPS = tl.constexpr(20)
# The smallest positive normal float32, 2^-126 (support_indicator).
SMALLEST_NORMAL = tl.constexpr(2.0 ** -126)
# Mass errors the early stop of the refinement allows after its last step: fp32 inputs, 16-bit ones.
_STOP_MASS_ERROR = {False: 1e-6, True: 1e-4}
# Above this residual Halley's own (cubic) error could matter too, not only the support change
# that `stop_residual` bounds; tests/test_kernel_entmax.py checks every step taken below it.
_MAX_STOP_RESIDUAL = 2e-2


def alpha_mode(alpha: float) -> int:
    """The constexpr alpha mode for a Python float alpha."""
    if alpha == 1.5:
        return 1
    if alpha == 2.0:
        return 2
    return 0


@triton.jit
def _pow_positive(u, exponent):
    """u ** exponent for u > 0 (exponent > 0 or < 0), zero where u <= 0."""
    positive = u > 0
    safe_u = tl.where(positive, u, 1.0)
    return tl.where(positive, tl.exp2(exponent * tl.log2(safe_u)), 0.0)


def stop_residual(alpha: float, low_precision: bool) -> float:
    """Largest |sum(p) - 1| at which a refinement pass can be the last one: the Halley step taken
    from there must reach the mass error of _STOP_MASS_ERROR (1e-6 for fp32 inputs, 1e-4 for bf16
    and fp16, each 10x inside the kernels' promise).

    Why: with power = 1 / (alpha - 1) >= 1 and every u <= 1 (y <= 1 and t >= 0), |mass'| = power *
    sum u^(power - 1) >= power * mass ~ power, so a residual r puts t within r / power of tau. The
    step cannot see elements whose support starts in between; each adds at most (r / power)^power
    to the mass. Solving for r gives power * error^(1 / power): 2e-3 (fp32) and 2e-2 (16-bit) for
    alpha = 1.5, the error itself for sparsemax. Above _MAX_STOP_RESIDUAL the step's own (cubic)
    error is not small enough, so the result is capped there. docs/kernels.md has the measurements.
    """
    power = 1.0 / (alpha - 1.0)
    return min(_MAX_STOP_RESIDUAL, power * _STOP_MASS_ERROR[low_precision] ** (1.0 / power))


@triton.jit
def probability(u, power, ALPHA_MODE: tl.constexpr):
    """p = u ** power for u = [z - tau]_+ (u >= 0)."""
    if ALPHA_MODE == 1:
        p = u * u
    elif ALPHA_MODE == 2:
        p = u
    else:
        p = _pow_positive(u, power)
    return p


@triton.jit
def gradient_weight(u, power, ALPHA_MODE: tl.constexpr):
    """g = p ** (2 - alpha) = u ** (power - 1): the entmax Jacobian weight (zero off the support)."""
    if ALPHA_MODE == 1:
        g = u
    elif ALPHA_MODE == 2:
        g = support_indicator(u)
    else:
        g = _pow_positive(u, power - 1.0)
    return g


@triton.jit
def gap_below_one(y):
    """u = [y]_+ for y = z - t, given that every y is at most 1: as one saturated instruction.

    Every threshold t the kernels take a gap against is at least the row's maximum z minus 1
    (tau >= max - 1, and each bracket's lower end is), so u <= 1 and clamping to [0, 1] is [.]_+.
    ptxas folds the clamp into the multiply-add that forms y (FFMA.SAT), where max(y, 0) is one
    more instruction per score (docs/kernels.md, "The gap as one saturated multiply-add"). Where t
    rounds an ulp of z below max - 1, y may exceed 1 by that ulp; 1 is then also what u is at the
    exact tau. The one place where y can really exceed 1, the dense pass's sums at a seed
    threshold in a row whose maximum lies outside the seed tiles, discards those sums."""
    return tl.clamp(y, 0.0, 1.0)


@triton.jit
def support_indicator(u):
    """1 where u = [y - t]_+ is positive, 0 where it is zero, as floats, in one instruction.

    u * 2^126 is at least 1 for every positive normal u, and ptxas folds the clamp to [0, 1] into
    the multiply (FMUL.SAT), where a compare and a select take two instructions per score
    (docs/kernels.md, "Counting the support"). A subnormal u (within 1.2e-38 of the threshold)
    gives a fraction; it adds nothing to the mass either way."""
    return tl.clamp(u * (1.0 / SMALLEST_NORMAL), 0.0, 1.0)


@triton.jit
def support_size(u):
    """Per-row count of the positive entries of u = [y - t]_+, as a float: the support's size."""
    return tl.sum(support_indicator(u), axis=1)


@triton.jit
def power_sums(u, power, ALPHA_MODE: tl.constexpr):
    """Per-row mass(t) = sum u^power and its first two derivatives in t, for u = [y - t]_+.

    mass' = -power * sum u^(power - 1) and mass'' = power * (power - 1) * sum u^(power - 2).
    """
    if ALPHA_MODE == 1:
        mass = tl.sum(u * u, axis=1)
        slope = -2.0 * tl.sum(u, axis=1)
        curvature = 2.0 * support_size(u)
    elif ALPHA_MODE == 2:
        mass = tl.sum(u, axis=1)
        slope = -support_size(u)
        curvature = tl.zeros_like(mass)
    else:
        # One log2 and one exp2 per element: u^(power-2), then multiply up by u twice.
        u_pow_m2 = _pow_positive(u, power - 2.0)
        u_pow_m1 = u_pow_m2 * u
        mass = tl.sum(u_pow_m1 * u, axis=1)
        slope = -power * tl.sum(u_pow_m1, axis=1)
        curvature = power * (power - 1.0) * tl.sum(u_pow_m2, axis=1)
    return mass, slope, curvature


@triton.jit
def histogram_rows(y_times_bins, NUM_BINS: tl.constexpr):
    """Per-row counts (int32, shape [rows, NUM_BINS]) of the entries of y that lie in [0, 1],
    given y * NUM_BINS (callers fold that factor into the multiply-add that forms y).

    Bin b holds y in [b / NUM_BINS, (b + 1) / NUM_BINS); y = 1 (the row maximum) goes to the top
    bin; y < 0 (and -inf for masked entries) is ignored. What the bracket needs is that every
    element lies in [lower edge, lower edge + 1 / NUM_BINS], which also holds for the one case
    where the rounding below picks the lower bin: y exactly on an edge.

    Counting is bit-packed: four 8-bit counters per int32 word, so each element costs a few
    integer operations and NUM_BINS / 4 select-and-adds instead of NUM_BINS compares. A tile row
    holds at most 255 entries per bin before a counter would overflow, which the callers
    guarantee by using at most 255 columns per tile.
    """
    tl.static_assert(NUM_BINS % 4 == 0, "NUM_BINS must be a multiple of 4")
    tl.static_assert(y_times_bins.shape[1] <= 255, "a tile row must have at most 255 columns")
    # floor() without a float-to-int conversion (a slow instruction): adding 1.5 * 2^23 rounds
    # to an integer held in the low mantissa bits. The upper clamp sends y = 1 to the top bin.
    # No lower clamp is needed: y < 0 gives a float below 1.5 * 2^23, whose bits are below the
    # offset (a negative bin); -inf and other negative floats have the sign bit set, and their
    # difference (wrapping or not) can only be a bin in [0, NUM_BINS) for the bit patterns just
    # above the offset, which are positive floats. Either way no word below matches.
    x = tl.minimum(y_times_bins, NUM_BINS - 0.5)
    rounded = (x - 0.5) + 12582912.0
    bins = rounded.to(tl.int32, bitcast=True) - 0x4B400000
    word_of_bin = bins >> 2  # arithmetic shift: negative bins stay negative
    one_in_counter = tl.full(bins.shape, 1, tl.int32) << ((bins & 3) << 3)

    bin_ids = tl.arange(0, NUM_BINS)
    counts = tl.zeros([y_times_bins.shape[0], NUM_BINS], dtype=tl.int32)
    for word in tl.static_range(NUM_BINS // 4):
        packed = tl.sum(tl.where(word_of_bin == word, one_in_counter, 0), axis=1)
        unpacked = (packed[:, None] >> ((bin_ids % 4) * 8)[None, :]) & 255
        counts += tl.where((bin_ids // 4 == word)[None, :], unpacked, 0)
    return counts


@triton.jit
def _approximate_mass(counts_f, lower_edges, t, power, ALPHA_MODE: tl.constexpr):
    """Mass at t (one per row) when every element sits at its bin's lower edge."""
    u = tl.maximum(lower_edges[None, :] - t[:, None], 0.0)
    return tl.sum(counts_f * probability(u, power, ALPHA_MODE), axis=1)


@triton.jit
def bracket_from_histogram(counts, power, ALPHA_MODE: tl.constexpr, NUM_BINS: tl.constexpr):
    """Bracket [lo, hi] (width <= 1 / NUM_BINS) around t = tau - (rowmax - 1), one per row.

    Rows with no counted element (padding, fully masked rows) get lo = hi = 0.
    """
    counts_f = counts.to(tl.float32)
    bin_ids = tl.arange(0, NUM_BINS)
    lower_edges = bin_ids.to(tl.float32) / NUM_BINS

    # Approximate mass at every lower edge j: sum over b > j of c_b * ((b - j) / NUM_BINS)^power,
    # as one small matrix product [rows, bins] x [bins, edges].
    gap = (bin_ids[:, None] - bin_ids[None, :]).to(tl.float32) / NUM_BINS  # [bin b, edge j]
    edge_weights = probability(tl.maximum(gap, 0.0), power, ALPHA_MODE)
    if NUM_BINS >= 16:
        mass_at_edges = tl.dot(counts_f, edge_weights, input_precision="ieee")
    else:
        # Compiled tl.dot needs operands of at least 16 x 16; with fewer bins, multiply and add.
        mass_at_edges = tl.sum(counts_f[:, :, None] * edge_weights[None, :, :], axis=1)
    # The approximate mass falls as t rises; edges_below = number of edges where it is still
    # >= 1, so its root lies in [edge[edges_below - 1], edge[edges_below]] and the bins that are
    # active there (lower edge above t) are those with index >= edges_below.
    edges_below = tl.sum((mass_at_edges >= 1.0).to(tl.int32), axis=1)
    active = bin_ids[None, :] >= edges_below[:, None]
    s0 = tl.sum(tl.where(active, counts_f, 0.0), axis=1)
    s1 = tl.sum(tl.where(active, counts_f * lower_edges[None, :], 0.0), axis=1)
    has_mass = s0 > 0
    safe_s0 = tl.where(has_mass, s0, 1.0)

    if ALPHA_MODE == 1:
        # sum c (l - t)^2 = 1  <=>  s0 t^2 - 2 s1 t + (s2 - 1) = 0; the smaller root, written
        # without the cancellation of s1 - sqrt(...).
        s2 = tl.sum(tl.where(active, counts_f * lower_edges[None, :] * lower_edges[None, :], 0.0), axis=1)
        root = tl.sqrt(tl.maximum(s1 * s1 - s0 * (s2 - 1.0), 0.0))
        denominator = s1 + root
        t_low = (s2 - 1.0) / tl.where(denominator > 0, denominator, 1.0)
        t_high = t_low
    elif ALPHA_MODE == 2:
        # sum c (l - t) = 1  <=>  t = (s1 - 1) / s0
        t_low = (s1 - 1.0) / safe_s0
        t_high = t_low
    else:
        # No closed form: bisect the approximate mass inside its one-bin segment. The mass is at
        # least 1 at t = -1 (every counted element then has u >= 1), so -1 bounds an empty segment.
        t_low = tl.where(edges_below > 0, (edges_below - 1).to(tl.float32) / NUM_BINS, -1.0)
        t_high = edges_below.to(tl.float32) / NUM_BINS
        for _ in tl.static_range(_GENERAL_ALPHA_BISECTION_STEPS):
            middle = 0.5 * (t_low + t_high)
            above_one = _approximate_mass(counts_f, lower_edges, middle, power, ALPHA_MODE) >= 1.0
            t_low = tl.where(above_one, middle, t_low)
            t_high = tl.where(above_one, t_high, middle)

    # Elements sit at most one bin width above their lower edge; the true t is also >= 0 (the
    # arg-max alone gives mass 1 there) and < 1 (the arg-max must keep p > 0).
    lo = tl.where(has_mass, tl.maximum(t_low, 0.0), 0.0)
    hi = tl.where(has_mass, tl.minimum(t_high + 1.0 / NUM_BINS, 1.0), 0.0)
    hi = tl.maximum(hi, lo)
    return lo, hi


@triton.jit
def all_converged(mass, solving, stop_residual):
    """Whether every solving row's mass is within stop_residual (see `stop_residual`) of 1: the
    Halley step about to be taken from these sums is the last one needed."""
    residual = tl.max(tl.where(solving, tl.abs(mass - 1.0), 0.0), axis=0)
    return residual <= stop_residual


@triton.jit
def halley_update(t, lo, hi, mass, slope, curvature):
    """One safeguarded Halley step for mass(t) = 1; returns (t, lo, hi).

    mass is convex and decreasing in t, so a Newton step from any point lands at or below the
    root: it tightens lo for free. The Halley step (Newton for sparsemax, where curvature = 0) is
    taken, clamped into the bracket, when it lands within one bracket width of it; the bracket's
    midpoint otherwise.
    """
    f = mass - 1.0
    lo = tl.where(f > 0, t, lo)
    hi = tl.where(f < 0, t, hi)
    has_slope = slope < 0
    safe_slope = tl.where(has_slope, slope, -1.0)
    newton = t - f / safe_slope
    lo = tl.where(has_slope, tl.maximum(lo, newton), lo)
    lo = tl.minimum(lo, hi)

    denominator = 2.0 * slope * slope - f * curvature
    use_halley = has_slope & (denominator > 0)
    halley = t - 2.0 * f * slope / tl.where(use_halley, denominator, 1.0)
    step = tl.where(use_halley, halley, newton)
    # A step that overshoots by a little is clamped rather than replaced by the midpoint: when
    # the root sits on the bracket's edge (t = 0 whenever the arg-max is alone in the support,
    # the common case for peaked rows), rounding puts nearly every step just outside, and
    # bisecting there would converge only linearly.
    width = hi - lo
    near = has_slope & (step >= lo - width) & (step <= hi + width)
    clamped = tl.minimum(tl.maximum(step, lo), hi)
    t = tl.where(f == 0, t, tl.where(near, clamped, 0.5 * (lo + hi)))
    return t, lo, hi
