"""How fast the threshold solver converges: max |sum(p) - 1| of `kernels.entmax` per row family,
for histogram bin counts and refinement passes (docs/kernels.md, "What remains").

The row-wise kernel shares the attention kernel's tau machinery (kernels/_tau.py), so this answers
"would 8 bins do?" or "is the third pass needed?" on a CPU, under the Triton interpreter:

    TRITON_INTERPRET=1 python scripts/tau_convergence.py --bins 16 8 --passes 1 2 3

"passes" is the kernel's n_iter, a cap: the kernel skips passes once a block of rows has converged
(kernels._tau.stop_residual), so each column shows what that cap delivers.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # before kernels is imported
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import kernels  # noqa: E402


def row_families(rows: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Score rows that stress the solver differently: spreads, near-ties, heavy tails, exact ties."""
    gen = torch.Generator().manual_seed(seed)
    families = {f"gaussian spread {s}, 1024": torch.randn(rows, 1024, generator=gen) * s for s in (0.3, 1, 3, 10, 100)}
    families["near-uniform 4000, spread 1e-3"] = torch.randn(rows, 4000, generator=gen) * 1e-3
    families["near-uniform 512, spread 1e-2"] = torch.randn(rows, 512, generator=gen) * 1e-2
    # Student-t with 2 degrees of freedom, from the same generator: normal / sqrt(chi2 / 2)
    chi2 = torch.randn(rows, 2048, 2, generator=gen).pow(2).sum(-1)
    families["heavy tail (t2), 2048"] = 2 * torch.randn(rows, 2048, generator=gen) / (chi2 / 2).sqrt()
    ties = torch.randn(rows, 1024, generator=gen)
    ties[:, :8] = 5.0
    families["8 exact ties on top, 1024"] = ties
    families["gaussian spread 2, 64"] = torch.randn(rows, 64, generator=gen) * 2
    return families


def mass_errors(x: torch.Tensor, bins: int, passes: int, alpha: float = 1.5) -> float:
    """max |sum(p) - 1| over the rows of x, with `bins` histogram bins and `passes` refinement passes."""
    module = sys.modules["kernels.entmax"]  # kernels.entmax the attribute is the function
    saved = module.NUM_BINS
    module.NUM_BINS = bins
    try:
        p = kernels.entmax(x, alpha=alpha, n_iter=passes)
    finally:
        module.NUM_BINS = saved
    return (p.double().sum(-1) - 1).abs().max().item()


def main(argv=None) -> dict[tuple[str, int, int], float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bins", type=int, nargs="+", default=[16, 8])
    parser.add_argument("--passes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--alpha", type=float, default=1.5)
    parser.add_argument("--rows", type=int, default=16)
    args = parser.parse_args(argv)
    for bins in args.bins:
        if bins < 4 or bins % 4:
            parser.error(f"--bins must be multiples of 4 (four 8-bit counters per word), got {bins}")
    columns = [(b, n) for b in args.bins for n in args.passes]
    print("| rows | " + " | ".join(f"{b} bins, {n} passes" for b, n in columns) + " |")
    print("|---|" + "---|" * len(columns))
    results = {}
    for name, x in row_families(args.rows).items():
        errors = [mass_errors(x, b, n, args.alpha) for b, n in columns]
        results.update({(name, b, n): e for (b, n), e in zip(columns, errors)})
        print(f"| {name} | " + " | ".join(f"{e:.1e}" for e in errors) + " |")
    return results


if __name__ == "__main__":
    main()
