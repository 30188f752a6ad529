"""What 128-row query tiles would do to the tile visits of the passes that follow the threshold
(the output pass, the dQ kernel), from exact float64 thresholds on the bench inputs (alpha = 1.5).

Every pass loads one key tile (and a value tile) per listed key tile of a 64-row query tile. A
program over two neighbouring 64-row query tiles (128 rows, 8 warps) would load each key tile once
for both, visiting the union of the two lists. This prints, over sampled pairs of query tiles:

- the non-zero 64 x 64 tiles as a fraction of the causal ones (1 - block sparsity);
- the score work of the union against the two lists (each union tile costs 128 rows of scores);
- the key/value tile loads of the union against the two lists;
- the dense pass's key-tile loads with 128-row query tiles (no list: every causal key tile).

    python docs/experiments/sim_wide_query_tiles.py --seqlens 8192 --regimes long trained --stride 2
    python docs/experiments/sim_wide_query_tiles.py --seqlens 32768 --regimes long --stride 16
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from scripts.bench_attention import make_qk  # noqa: E402
from sim_seed_gaps import exact_tau  # noqa: E402

TILE = 64


def union_visits(n: int, d: int, regime: str, heads: int, stride: int) -> dict[str, int]:
    """Counts over every stride-th pair of 64-row query tiles of the first `heads` heads: causal
    tiles, non-zero tiles, union tiles (a key tile non-zero for either query tile of the pair), and
    the key tiles a 128-row dense pass loads."""
    q, k = make_qk(n, d, regime, heads=heads, dtype=torch.bfloat16)
    q, k = q[0].double(), k[0].double()
    z_scale = 0.5 / math.sqrt(d)
    counts = dict.fromkeys(("causal", "nonzero", "union", "dense_wide"), 0)
    for h in range(heads):
        for pair in range(0, n // (2 * TILE), stride):
            first, keys = 2 * pair * TILE, (2 * pair + 2) * TILE
            z = z_scale * (q[h, first:keys] @ k[h, :keys].T)
            z = z.masked_fill(torch.arange(keys)[None] > torch.arange(first, keys)[:, None], -math.inf)
            m = z.amax(1)
            tau = exact_tau(z - (m - 1)[:, None]) + m - 1
            n_tiles = keys // TILE
            nonzero = (z > tau[:, None]).view(2, TILE, n_tiles, TILE).any(3).any(1)  # (query tile, key tile)
            counts["causal"] += (2 * pair + 1) + (2 * pair + 2)
            counts["nonzero"] += int(nonzero.sum())
            counts["union"] += int(nonzero.any(0).sum())
            counts["dense_wide"] += n_tiles
    return counts


def main(argv=None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seqlens", type=int, nargs="+", default=[8192])
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--regimes", nargs="+", default=["long", "trained"])
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--stride", type=int, default=2, help="use every stride-th pair of query tiles")
    args = p.parse_args(argv)
    lines = []
    for n in args.seqlens:
        for regime in args.regimes:
            c = union_visits(n, args.head_dim, regime, args.heads, args.stride)
            lines.append(f"N {n} D {args.head_dim} {regime} (heads {args.heads}, every {args.stride}th pair): "
                         f"non-zero {c['nonzero'] / c['causal']:.3f} of {c['causal']} causal tiles; 128-row union: "
                         f"score work {2 * c['union'] / c['nonzero']:.3f}x, key/value loads {c['union'] / c['nonzero']:.3f}x; "
                         f"dense pass key loads {c['dense_wide'] / c['causal']:.3f}x")
            print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    main()
