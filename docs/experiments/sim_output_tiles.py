"""Simulate, on the benchmark's inputs (alpha = 1.5, float64, CPU), how many tiles the plain output
pass visits (D 128; docs/kernels.md "What remains"), and whether a per-row exact filter after the
refinement passes would shrink that list.

For sampled query tiles of `scripts.bench_attention.make_qk` it replays the seed start and the
refinement passes up to convergence as `sim_seed_threshold.py` does, filtering the tile list after
each pass two ways:
- reach: the kernel's `_drop_zero_tiles` (every row's largest z in the tile at or below its lower
  bound of tau, one number per tile against the rows' smallest bound);
- per row: where every row's pass threshold became its lower bound (mass >= 1 there), drop the
  tiles whose every row scores at or below that threshold (what a per-slot atomic max of the
  rows' sum of u would give the kernel); otherwise the reach filter.
It prints both list lengths entering the output pass, the reach filter's list once more against
the final tau itself (what one more `_drop_zero_tiles` after the last pass would leave), and the
non-zero tiles at the final tau, as shares of the allowed tiles, and how many passes had every row
below tau.

    python docs/experiments/sim_output_tiles.py --seqlens 4096 8192 --regimes trained long --head-dim 128
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
from sim_seed_threshold import (SEEDS_NEAR, STOP, TILE, halley, run_simulation, seed_threshold,  # noqa: E402
                                start_from_sums, sums)


def simulate(n: int, d: int, regime: str, heads: int, stride: int, max_passes: int = 4) -> None:
    q, k = make_qk(n, d, regime, heads=heads, dtype=torch.bfloat16)
    q, k = q[0].double(), k[0].double()
    totals = collections.Counter()
    for h in range(heads):
        for qt in range(0, n // TILE, stride):
            n_tiles = qt + 1
            keys = n_tiles * TILE
            z = 0.5 * (q[h, qt * TILE:keys] @ k[h, :keys].T) / math.sqrt(d)
            z = z.masked_fill(torch.arange(keys)[None, :] > torch.arange(qt * TILE, keys)[:, None], -math.inf)
            seeds = sorted({0, *(s for s in range(qt - SEEDS_NEAR + 1, qt + 1) if s >= 0)})
            shift = z.amax(1) - 1
            y = z - shift[:, None]
            ref = seed_threshold(z, seeds) - shift  # the rows' gap references, in y's units
            t, lo, hi, residual = start_from_sums(y, ref)
            tile_max = y.view(TILE, n_tiles, TILE).amax(2)  # [rows, tiles]
            reach = (tile_max - ref[:, None]).amax(0)  # _tile_gap

            def reach_filter(tiles, bound):
                return [j for j in tiles if reach[j] >= (bound - ref).min()]

            by_reach = reach_filter(range(n_tiles), lo)
            by_row = list(by_reach)
            if residual > STOP:
                for _ in range(max_passes):
                    mass, slope, curvature = sums(y, t)
                    done = (mass - 1).abs().max().item() <= STOP
                    t_next, lo, hi = halley(t, lo, hi, mass, slope, curvature)
                    every_row_below = bool((lo >= t).all())
                    totals["passes"] += 1
                    totals["every_row_below"] += every_row_below
                    by_reach = reach_filter(by_reach, lo)
                    if every_row_below:
                        by_row = [j for j in by_row if (tile_max[:, j] > t).any()]
                    else:
                        by_row = reach_filter(by_row, lo)
                    t = t_next
                    if done:
                        break
            totals["allowed"] += n_tiles
            totals["final_reach"] += len(reach_filter(by_reach, t))
            totals["reach"] += len(by_reach)
            totals["row"] += len(by_row)
            totals["nonzero"] += int((tile_max > t[:, None]).any(0).sum())
    allowed = totals["allowed"]
    print(f"N {n} D {d} {regime}: tiles entering the output pass, of the allowed: reach filter "
          f"{totals['reach'] / allowed:.1%}, per-row filter {totals['row'] / allowed:.1%}, reach filter at the final "
          f"tau {totals['final_reach'] / allowed:.1%}; non-zero at tau "
          f"{totals['nonzero'] / allowed:.1%}; passes with every row below tau {totals['every_row_below']} of "
          f"{totals['passes']}")


def main(argv=None) -> None:
    run_simulation(simulate, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    main()
