"""Simulate the threshold solver's start on the benchmark's inputs (alpha = 1.5, float64, CPU):
the histogram start (main) against the seed-threshold start (docs/kernels.md "Seed threshold").

For sampled query tiles of `scripts.bench_attention.make_qk` it replays, in PyTorch, what the
threshold launch computes per row, and prints how many passes each start needs after the dense
pass (the last of them is the output launch's final pass) and the residual |sum(p) - 1| at the
dense pass's sums that separates one pass from two.

    python docs/experiments/sim_seed_threshold.py --seqlens 8192 --regimes trained long sparse

--seeds-near and --seed-solve try cheaper seed passes (docs/kernels.md, What remains): fewer seed
tiles up to the diagonal, the seed threshold taken as the lower end of the seed tiles' histogram
bracket without their Halley pass, or two Halley passes from m - 1 without their histogram.
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from scripts.bench_attention import make_qk  # noqa: E402

BINS, TILE, STOP = 8, 64, 1e-2  # the kernel's bins, tiles and (bf16) stop residual
SEEDS_NEAR = 2  # seed tiles up to the diagonal, besides the first tile


def bracket(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """_tau.bracket_from_histogram: every element at its bin's lower edge, root of the quadratic."""
    bins = torch.clamp(torch.floor(y * BINS), max=BINS - 1)
    counts = torch.stack([((bins == b) & (y >= 0)).sum(1) for b in range(BINS)], 1).double()
    edges = torch.arange(BINS, dtype=torch.float64) / BINS
    gap = (torch.arange(BINS)[:, None] - torch.arange(BINS)[None, :]).double() / BINS
    below = ((counts @ gap.clamp(min=0) ** 2) >= 1).sum(1)
    active = torch.arange(BINS)[None, :] >= below[:, None]
    s0, s1, s2 = ((counts * active * edges ** p).sum(1) for p in (0, 1, 2))
    root = torch.sqrt((s1 * s1 - s0 * (s2 - 1)).clamp(min=0))
    t_low = (s2 - 1) / torch.where(s1 + root > 0, s1 + root, torch.ones_like(root))
    lo = torch.where(s0 > 0, t_low.clamp(min=0), torch.zeros_like(t_low))
    hi = torch.maximum(torch.where(s0 > 0, (t_low + 1 / BINS).clamp(max=1), torch.zeros_like(t_low)), lo)
    return lo, hi


def sums(y: torch.Tensor, t: torch.Tensor):
    u = (y - t[:, None]).clamp(min=0)
    return (u * u).sum(1), -2 * u.sum(1), 2 * (u > 0).double().sum(1)


def halley(t, lo, hi, mass, slope, curvature):
    """_tau.halley_update."""
    f = mass - 1
    lo = torch.where(f > 0, t, lo)
    hi = torch.where(f < 0, t, hi)
    has_slope = slope < 0
    newton = t - f / torch.where(has_slope, slope, -torch.ones_like(slope))
    lo = torch.minimum(torch.where(has_slope, torch.maximum(lo, newton), lo), hi)
    denominator = 2 * slope * slope - f * curvature
    use_halley = has_slope & (denominator > 0)
    step = torch.where(use_halley, t - 2 * f * slope / torch.where(use_halley, denominator, torch.ones_like(f)), newton)
    width = hi - lo
    near = has_slope & (step >= lo - width) & (step <= hi + width)
    t = torch.where(f == 0, t, torch.where(near, step.clamp(min=lo, max=hi), 0.5 * (lo + hi)))
    return t, lo, hi


def solve_until_converged(y, t, lo, hi, stop=None, cap=12):
    """Passes (power sums at t, then a Halley step) until one finds every row within the stop
    residual (STOP unless given), and the threshold after that pass's step."""
    stop = STOP if stop is None else stop
    for n in range(1, cap + 1):
        mass, slope, curvature = sums(y, t)
        done = (mass - 1).abs().max().item() <= stop
        t, lo, hi = halley(t, lo, hi, mass, slope, curvature)
        if done:
            return n, t
    return cap, t


def passes_until_converged(y, t, lo, hi, cap=12):
    """Passes (power sums at t, then a Halley step) until one finds every row within STOP."""
    return solve_until_converged(y, t, lo, hi, cap=cap)[0]


def seed_threshold(z: torch.Tensor, seeds: list[int], seed_solve: str = "halley") -> torch.Tensor:
    """_seed_threshold: the lower end of the seed tiles' bracket after one Halley pass over them
    (seed_solve "bracket": the lower end of their histogram bracket, without that pass)."""
    zs = torch.cat([z[:, s * TILE:(s + 1) * TILE] for s in seeds], 1)
    seed_shift = zs.amax(1) - 1
    if seed_solve == "halley2":  # no histogram: two Halley passes from the lower end m - 1
        ys = zs - seed_shift[:, None]
        t, lo, hi = torch.zeros_like(seed_shift), torch.zeros_like(seed_shift), torch.ones_like(seed_shift)
        for _ in range(2):
            t, lo, hi = halley(t, lo, hi, *sums(ys, t))
        return seed_shift + lo
    lo, hi = bracket(zs - seed_shift[:, None])
    if seed_solve == "halley":
        _, lo, _ = halley(0.5 * (lo + hi), lo, hi, *sums(zs - seed_shift[:, None], 0.5 * (lo + hi)))
    return seed_shift + lo


def start_from_sums(y: torch.Tensor, t_sums: torch.Tensor):
    """_start_from_sums: (t, lo, hi) from the power sums at t_sums, and the residual there."""
    mass, slope, curvature = sums(y, t_sums)
    s0, s1 = curvature / 2, -slope / 2
    discriminant = s1 * s1 - s0 * (mass - 1)
    denominator = s1 + discriminant.clamp(min=0).sqrt()
    root = t_sums + (mass - 1) / torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    lo = t_sums.clamp(min=0)
    hi = torch.maximum(torch.where((discriminant >= 0) & (denominator > 0), root.clamp(max=1), torch.ones_like(root)), lo)
    t, lo_step, hi = halley(t_sums, lo, hi, mass, slope, curvature)
    lo = torch.maximum(lo_step, lo)
    return torch.minimum(torch.maximum(t, lo), hi), lo, hi, (mass - 1).abs().max().item()


def seed_start(z: torch.Tensor, seeds: list[int], seed_solve: str = "halley"):
    """_seed_threshold, then _start_from_sums: returns y = z - (m - 1), (t, lo, hi) in those units
    and the residual at the dense pass's sums."""
    shift = z.amax(1) - 1
    y = z - shift[:, None]
    t, lo, hi, residual = start_from_sums(y, seed_threshold(z, seeds, seed_solve) - shift)
    return y, t, lo, hi, residual


def simulate(n: int, d: int, regime: str, heads: int, stride: int, seeds_near: int = SEEDS_NEAR,
             seed_solve: str = "halley") -> None:
    q, k = make_qk(n, d, regime, heads=heads, dtype=torch.bfloat16)
    q, k = q[0].double(), k[0].double()
    histogram, seeded = collections.Counter(), collections.Counter()
    residuals = collections.defaultdict(list)
    for h in range(heads):
        for qt in range(0, n // TILE, stride):
            keys = (qt + 1) * TILE
            z = 0.5 * (q[h, qt * TILE:keys] @ k[h, :keys].T) / math.sqrt(d)
            z = z.masked_fill(torch.arange(keys)[None, :] > torch.arange(qt * TILE, keys)[:, None], -math.inf)
            shift = z.amax(1) - 1
            y = z - shift[:, None]
            lo, hi = bracket(y)
            histogram[passes_until_converged(y, 0.5 * (lo + hi), lo, hi)] += 1
            seeds = sorted({0, *(s for s in range(qt - seeds_near + 1, qt + 1) if s >= 0)})
            y, t, lo, hi, residual = seed_start(z, seeds, seed_solve)
            count = 0 if residual <= STOP else passes_until_converged(y, t, lo, hi)
            seeded[count] += 1
            residuals[count].append(residual)
    total = sum(histogram.values())
    share = lambda c: {k_: f"{v / total:.0%}" for k_, v in sorted(c.items())}  # noqa: E731
    print(f"N {n} D {d} {regime} (seeds near the diagonal {seeds_near}, seed solve {seed_solve}): passes after "
          f"the dense pass, histogram start {share(histogram)}, "
          f"seed start {share(seeded)} (0: the dense pass's sums converged)")
    for count, values in sorted(residuals.items()):
        print(f"    seed start, {count} pass(es): residual at the dense pass's sums {min(values):.3f} to {max(values):.3f}")


def sim_arguments(description: str) -> argparse.ArgumentParser:
    """The bench inputs to replay: lengths, head dim, regimes, heads, which query tiles."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seqlens", type=int, nargs="+", default=[8192])
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--regimes", nargs="+", default=["trained", "long", "sparse"])
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--stride", type=int, default=4, help="simulate every stride-th query tile")
    return p


def run_simulation(simulate, description: str, argv=None) -> None:
    """Parse sim_arguments and call simulate(n, head_dim, regime, heads, stride) for every length and
    regime asked for: the main() of the simulations that need no options of their own."""
    args = sim_arguments(description).parse_args(argv)
    for n in args.seqlens:
        for regime in args.regimes:
            simulate(n, args.head_dim, regime, args.heads, max(args.stride, n // 2048))


def main(argv=None) -> None:
    p = sim_arguments(__doc__.split("\n\n")[0])
    p.add_argument("--seeds-near", type=int, default=SEEDS_NEAR,
                   help="seed tiles up to the diagonal, besides the first tile (the kernel: 2)")
    p.add_argument("--seed-solve", choices=("halley", "bracket", "halley2"), default="halley",
                   help="the seed threshold: after one Halley pass over the seed tiles (the kernel), the "
                        "lower end of their histogram bracket, or two Halley passes from m - 1 without the "
                        "histogram")
    args = p.parse_args(argv)
    for n in args.seqlens:
        for regime in args.regimes:
            simulate(n, args.head_dim, regime, args.heads, max(args.stride, n // 2048), args.seeds_near,
                     args.seed_solve)


if __name__ == "__main__":
    main()
