"""Simulate a lighter fused final pass for head dim 128 (alpha = 1.5, float64, CPU, bench inputs).

The fused final pass (D <= 64) keeps three [64, D] accumulators so that it can expand the output
to the threshold after its own Halley step; at D 128 they do not fit 4 warps (docs/kernels.md,
What remains, item 7). A lighter pass would accumulate only the output and obar at its own
threshold t1 (the Halley step from the dense pass's sums), as the plain output pass does, and
take the power sums beside them. It could keep its result only where every row of the query
tile already has |sum(p) - 1| <= 1e-4 at t1 (the kernel's target for 16-bit inputs); elsewhere
the refinement and the output pass would run as now.

Per sampled query tile this prints which case it falls in: converged at the dense pass's sums
(no refinement today), accepted at t1 (the lighter pass would save a refinement pass), t1
converged (within the stop residual: one refinement pass and the output pass today) or not.

    python docs/experiments/sim_speculative_output.py --seqlens 4096 8192 --head-dim 128 --regimes long trained
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
from sim_seed_threshold import SEEDS_NEAR, STOP, TILE, run_simulation, seed_start, sums  # noqa: E402

ACCEPT = 1e-4  # the mass error the kernel aims at for 16-bit inputs (_tau.stop_residual)


def simulate(n: int, d: int, regime: str, heads: int, stride: int) -> None:
    q, k = make_qk(n, d, regime, heads=heads, dtype=torch.bfloat16)
    q, k = q[0].double(), k[0].double()
    cases = collections.Counter()
    residuals = []
    for h in range(heads):
        for qt in range(0, n // TILE, stride):
            keys = (qt + 1) * TILE
            z = 0.5 * (q[h, qt * TILE:keys] @ k[h, :keys].T) / math.sqrt(d)
            z = z.masked_fill(torch.arange(keys)[None, :] > torch.arange(qt * TILE, keys)[:, None], -math.inf)
            seeds = sorted({0, *(s for s in range(qt - SEEDS_NEAR + 1, qt + 1) if s >= 0)})
            y, t1, _, _, residual = seed_start(z, seeds)
            if residual <= STOP:
                cases["converged at the dense pass's sums"] += 1
                continue
            mass, _, _ = sums(y, t1)
            at_t1 = (mass - 1).abs().max().item()
            residuals.append(at_t1)
            if at_t1 <= ACCEPT:
                cases["accepted at t1"] += 1
            elif at_t1 <= STOP:
                cases["t1 within the stop residual"] += 1
            else:
                cases["t1 beyond the stop residual"] += 1
    total = sum(cases.values())
    quartiles = torch.tensor(residuals).quantile(torch.tensor([0.25, 0.5, 0.75])).tolist() if residuals else []
    print(f"N {n} D {d} {regime}: " + ", ".join(f"{name} {count / total:.0%}" for name, count in sorted(cases.items()))
          + "; residual at t1, quartiles " + " / ".join(f"{value:.1e}" for value in quartiles))


if __name__ == "__main__":
    run_simulation(simulate, __doc__.split("\n\n")[0])
