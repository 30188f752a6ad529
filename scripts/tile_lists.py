"""How many key tiles each pass of the fused entmax forward visits, from exact (float64) thresholds.

The forward (kernels/entmax_attention.py) walks a per-query-tile list of key tiles that shrinks
between passes; every pass costs a QK^T per listed tile. This prints, as fractions of the causal
tiles, the lists' sizes for the benchmark's inputs (`scripts.bench_attention.make_qk`):

- dense: every causal tile (the dense pass);
- candidates: tiles whose maximum reaches min over the tile's rows of (m - 1) (the histogram pass);
- candidates, 16-row groups: the same test per group of 16 rows (one warp's), kept if any group
  passes: what per-group tile maxima would give;
- after histogram, at most: tiles whose maximum is above min over rows of (tau - 1 / bins), the
  lowest the histogram's lower bound of tau can be (the first refinement pass);
- after refinement: tiles whose maximum is above min over rows of tau (the limit the later passes
  and the output pass approach);
- after refinement, 16-row groups: the same per group of 16 rows;
- non-zero: tiles holding a non-zero probability (the backward), i.e. 1 - block sparsity.

    python scripts/tile_lists.py --n 8192 --regimes trained long sparse
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from kernels import reference  # noqa: E402
from kernels.entmax_attention import NUM_BINS  # noqa: E402
from scripts.bench_attention import make_qk  # noqa: E402

STAGES = ("dense", "candidates", "candidates, 16-row groups", "after histogram, at most", "after refinement",
          "after refinement, 16-row groups", "non-zero")
GROUP_ROWS = 16


def list_fractions(q: torch.Tensor, k: torch.Tensor, alpha: float = 1.5, block: int = 64,
                   tile_stride: int = 1, bins: int = NUM_BINS) -> dict[str, float]:
    """Fractions of causal (block x block) tiles in each list, over heads and every
    `tile_stride`-th query tile of q, k with shape (heads, n, d), n a multiple of block."""
    heads, n, d = q.shape
    if n % block or block % GROUP_ROWS:
        raise ValueError(f"n must be a multiple of block={block}, itself a multiple of {GROUP_ROWS}; got n={n}")
    counts = dict.fromkeys(STAGES, 0)
    for h in range(heads):
        for qt in range(0, n // block, tile_stride):
            n_keys = (qt + 1) * block
            scores = (q[h, qt * block:n_keys].double() @ k[h, :n_keys].double().T) / math.sqrt(d)
            positions = torch.arange(qt * block, n_keys)[:, None]
            scores = scores.masked_fill(torch.arange(n_keys)[None, :] > positions, -math.inf)
            probs = reference.entmax(scores, alpha=alpha)
            z = (alpha - 1) * scores
            support = probs > 0
            # On the support p = (z - tau)^(1 / (alpha - 1)), so tau = z - p^(alpha - 1).
            tau = (z - probs.pow(alpha - 1)).masked_fill(~support, -math.inf).amax(dim=1)
            row_tile_max = z.view(block, qt + 1, block).amax(dim=2)  # [row, key tile]
            tile_max = row_tile_max.amax(dim=0)
            group_tile_max = row_tile_max.view(-1, GROUP_ROWS, qt + 1).amax(dim=1)  # [group, key tile]
            row_max = z.amax(dim=1)
            group_min_max = row_max.view(-1, GROUP_ROWS).amin(dim=1)
            group_min_tau = tau.view(-1, GROUP_ROWS).amin(dim=1)
            counts["dense"] += qt + 1
            counts["candidates"] += int((tile_max >= row_max.min() - 1).sum())
            counts["candidates, 16-row groups"] += int((group_tile_max >= group_min_max[:, None] - 1).any(0).sum())
            counts["after histogram, at most"] += int((tile_max > tau.min() - 1 / bins).sum())
            counts["after refinement"] += int((tile_max > tau.min()).sum())
            counts["after refinement, 16-row groups"] += int((group_tile_max > group_min_tau[:, None]).any(0).sum())
            counts["non-zero"] += int(support.view(block, qt + 1, block).any(dim=2).any(dim=0).sum())
    return {stage: counts[stage] / counts["dense"] for stage in STAGES}


def main(argv=None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--regimes", nargs="+", default=["trained", "long", "sparse"],
                        help="bench_attention regime names or temperatures")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--tile-stride", type=int, default=4, help="use every k-th query tile")
    args = parser.parse_args(argv)
    results = {}
    print(f"N = {args.n}, D = {args.d}, {args.heads} heads, every {args.tile_stride}th query tile, "
          f"64 x 64 tiles, {NUM_BINS} bins; fractions of the causal tiles")
    print("| regime | " + " | ".join(STAGES) + " |")
    print("|---" * (len(STAGES) + 1) + "|")
    for regime in args.regimes:
        try:
            regime = float(regime)
        except ValueError:
            pass
        q, k = make_qk(args.n, args.d, regime, 0, heads=args.heads)
        fractions = list_fractions(q[0], k[0], tile_stride=args.tile_stride)
        results[str(regime)] = fractions
        print(f"| {regime} | " + " | ".join(f"{fractions[s]:.3f}" for s in STAGES) + " |")
    return results


if __name__ == "__main__":
    main()
