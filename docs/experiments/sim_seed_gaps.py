"""Simulate which key tiles the forward's refinement and final passes visit (alpha = 1.5, float64,
CPU): the kernel's zero-tile test against the tile's maximum and the rows' lowest bound of tau
(main), against a per-row test folded into one number per tile with the seed threshold
(docs/kernels.md, "Seed gaps"; landed in the ninth session).

Seed gaps: the dense pass already knows each row's seed threshold s_r, a lower bound of tau_r. It
can store, per key tile, G = max over rows of (the row's maximum in the tile - s_r) instead of the
tile's maximum. A later lower bound l_r then drops the tile when G < min over rows of (l_r - s_r) (the kernel
keeps ties, which only rounding creates; this float64 replay drops them too):
every row's maximum in the tile is then at most its own l_r. The rows' bounds move up from the
seed threshold by similar amounts, so this is close to a per-row test at the cost of a per-tile one.

For sampled query tiles of `scripts.bench_attention.make_qk` it replays the start of
sim_seed_threshold.py, one refinement pass where the start leaves a residual above 0.5, and prints
the share of allowed key tiles each pass visits under both tests, next to the share of tiles that
hold a non-zero probability (the least any test can keep).

    python docs/experiments/sim_seed_gaps.py --seqlens 8192 --regimes trained long sparse
"""

from __future__ import annotations

import collections
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from scripts.bench_attention import make_qk  # noqa: E402
from sim_seed_threshold import (SEEDS_NEAR, TILE, halley, run_simulation, seed_threshold,  # noqa: E402
                                start_from_sums, sums)

STRAIGHT = 0.5  # SEED_STRAIGHT_RESIDUAL


def exact_tau(y: torch.Tensor) -> torch.Tensor:
    """tau per row in y units, by bisection to float64 precision."""
    lo, hi = torch.zeros(y.shape[0], dtype=y.dtype), torch.ones(y.shape[0], dtype=y.dtype)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        above = sums(y, mid)[0] >= 1
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return lo


def simulate(n: int, d: int, regime: str, heads: int, stride: int) -> None:
    q, k = make_qk(n, d, regime, heads=heads, dtype=torch.bfloat16)
    q, k = q[0].double(), k[0].double()
    visits = collections.Counter()
    for h in range(heads):
        for qt in range(0, n // TILE, stride):
            keys = (qt + 1) * TILE
            z = 0.5 * (q[h, qt * TILE:keys] @ k[h, :keys].T) / math.sqrt(d)
            z = z.masked_fill(torch.arange(keys)[None, :] > torch.arange(qt * TILE, keys)[:, None], -math.inf)
            n_tiles = qt + 1
            tile_row_max = z.view(TILE, n_tiles, TILE).amax(2)  # [rows, key tiles]
            seeds = sorted({0, *(s for s in range(qt - SEEDS_NEAR + 1, qt + 1) if s >= 0)})
            seed_tau = seed_threshold(z, seeds)
            shift = z.amax(1) - 1
            y = z - shift[:, None]
            t, lo, hi, residual = start_from_sums(y, seed_tau - shift)
            tile_max = tile_row_max.amax(0)
            gaps = (tile_row_max - seed_tau[:, None]).amax(0)

            def kept(bound: torch.Tensor) -> tuple[int, int]:
                """tiles kept by the tile-maximum test and by the seed-gap test, for absolute bounds"""
                return (int((tile_max > bound.min()).sum()), int((gaps > (bound - seed_tau).min()).sum()))

            visits["allowed"] += n_tiles
            tau = shift + exact_tau(y)
            visits["non-zero"] += int((tile_row_max > tau[:, None]).any(0).sum())
            if residual > STRAIGHT:  # one refinement pass, then the final pass
                main, gap = kept(shift + lo)
                visits["refinement, main"] += main
                visits["refinement, seed gaps"] += gap
                t, lo, hi = halley(t, lo, hi, *sums(y, t))
            main, gap = kept(shift + lo)
            visits["final, main"] += main
            visits["final, seed gaps"] += gap
    allowed = visits.pop("allowed")
    print(f"N {n} D {d} {regime}: share of allowed key tiles visited: "
          + ", ".join(f"{name} {count / allowed:.1%}" for name, count in visits.items()))


def main(argv=None) -> None:
    run_simulation(simulate, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    main()
