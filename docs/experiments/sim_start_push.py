"""Replay the seed start's push (kernels/entmax_attention.py START_PUSH) on the bench inputs (alpha =
1.5, float64, CPU): where the start's first Halley step lands against tau, and how many refinement
passes each query tile needs after the start with and without the push (docs/kernels.md, "Start push").

The start (_start_from_sums) takes one Halley step from the power sums at the seed threshold t_s, a
lower bound of tau. That step lands below tau, the further the larger the excess mass e = mass - 1
at t_s. The first table bins the rows by e and prints (tau - t) / (t - t_s): how far up t would
have to move, in units of its own step. The second counts the passes (power sums at t, then a Halley
step, until every row of the query tile is within the stop residual; tiles weighted by their
length), for the start as it was and for t moved up by push * e^1.5 * (t - t_s), within the bracket.

    python docs/experiments/sim_start_push.py --seqlens 4096 8192 16384 --head-dim 128 --regimes long trained
    python docs/experiments/sim_start_push.py --head-dim 128 --pushes 0 0.045 --stop 2e-2   # a looser stop
"""

from __future__ import annotations

import collections
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import sim_seed_threshold as solver  # noqa: E402
from sim_seed_gaps import exact_tau  # noqa: E402
from scripts.bench_attention import make_qk  # noqa: E402

EXCESS_BINS = (0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.1, 1.4, 2, math.inf)


def query_tiles(n: int, d: int, regime: str, heads: int, stride: int, first_head: int = 0):
    """(y, t_s, t, lo, hi, residual at the sums, tile weight) per sampled query tile, as the kernel's
    seed start computes them (sim_seed_threshold.seed_start)."""
    q, k = make_qk(n, d, regime, heads=heads, dtype=torch.bfloat16)
    q, k = q[0].double(), k[0].double()
    tile = solver.TILE
    for h in range(first_head, heads):
        for qt in range(0, n // tile, stride):
            keys = (qt + 1) * tile
            z = 0.5 * (q[h, qt * tile:keys] @ k[h, :keys].T) / math.sqrt(d)
            z = z.masked_fill(torch.arange(keys)[None, :] > torch.arange(qt * tile, keys)[:, None], -math.inf)
            seeds = sorted({0, *(s for s in range(qt - solver.SEEDS_NEAR + 1, qt + 1) if s >= 0)})
            t_seed = (solver.seed_threshold(z, seeds) - (z.amax(1) - 1)).clamp(min=0)
            y, t, lo, hi, residual = solver.seed_start(z, seeds)
            yield y, t_seed, t, lo, hi, residual, keys / n


def pushed_start(y, t_seed, t, lo, hi, push: float) -> torch.Tensor:
    excess = (solver.sums(y, t_seed)[0] - 1).clamp(min=0)
    return torch.minimum(torch.maximum(t + push * excess * excess.sqrt() * (t - t_seed), lo), hi)


def passes_and_error(y, t, lo, hi, stop: float) -> tuple[int, float]:
    """The passes until the stop residual holds, and the largest |sum p - 1| after the last step."""
    count, t = solver.solve_until_converged(y, t, lo, hi, stop)
    return count, (solver.sums(y, t)[0] - 1).abs().max().item()


def simulate(n, d, regime, heads, stride, pushes, stop, first_head=0) -> None:
    offsets, excesses = [], []
    passes = {push: collections.Counter() for push in pushes}
    worst = dict.fromkeys(pushes, 0.0)
    for y, t_seed, t, lo, hi, residual, weight in query_tiles(n, d, regime, heads, stride, first_head):
        if residual <= stop:  # the sums converged: the start's step is the last one
            error = (solver.sums(y, t)[0] - 1).abs().max().item()
            for push in pushes:
                passes[push][0] += weight
                worst[push] = max(worst[push], error)
            continue
        offsets.append((exact_tau(y) - t) / (t - t_seed))
        excesses.append((solver.sums(y, t_seed)[0] - 1).clamp(min=0))
        for push in pushes:
            count, error = passes_and_error(y, pushed_start(y, t_seed, t, lo, hi, push), lo, hi, stop)
            passes[push][count] += weight
            worst[push] = max(worst[push], error)
    print(f"N {n} D {d} {regime}, heads {first_head}-{heads - 1}, stop residual {stop:g}: refinement passes per "
          "query tile after the start, length-weighted (largest |sum p - 1| at the final threshold)")
    for push, counts in passes.items():
        total = sum(counts.values())
        shares = ", ".join(f"{c}: {v / total:.2f}" for c, v in sorted(counts.items()))
        print(f"    push {push:g}: {sum(c * v for c, v in counts.items()) / total:.3f} ({shares}; "
              f"final error {worst[push]:.1e})")
    if not offsets:
        return
    offset, excess = torch.cat(offsets), torch.cat(excesses)
    print("    (tau - t) / (t - t_s) by the excess mass e at t_s: rows, 10th / 50th / 90th percentile")
    levels = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    for low, high in zip(EXCESS_BINS[:-1], EXCESS_BINS[1:]):
        chosen = (excess >= low) & (excess < high)
        if chosen.sum() >= 5:
            q10, q50, q90 = torch.quantile(offset[chosen], levels).tolist()
            print(f"      e in [{low:g}, {high:g}): {int(chosen.sum()):5d}   {q10:+.5f}  {q50:+.5f}  {q90:+.5f}")


def main(argv=None) -> None:
    p = solver.sim_arguments(__doc__.split("\n\n")[0])
    p.add_argument("--pushes", type=float, nargs="+", default=[0.0, 0.045],
                   help="push coefficients to replay (the kernel: START_PUSH = 0.045; 0 is the start without it)")
    p.add_argument("--first-head", type=int, default=0, help="replay heads first-head .. heads - 1 (others than the fit's)")
    p.add_argument("--stop", type=float, default=solver.STOP, help="stop residual (the kernel: 1e-2 for 16-bit inputs)")
    args = p.parse_args(argv)
    for n in args.seqlens:
        for regime in args.regimes:
            simulate(n, args.head_dim, regime, args.heads, max(args.stride, n // 2048), args.pushes, args.stop,
                     args.first_head)


if __name__ == "__main__":
    main()
