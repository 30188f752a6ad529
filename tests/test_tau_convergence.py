"""scripts/tau_convergence.py: the solver-convergence table behind docs/kernels.md's bin-count note."""

import pytest

from scripts import tau_convergence


def test_table_of_mass_errors(kernels_runnable, capsys):
    import sys
    default_bins = sys.modules["kernels.entmax"].NUM_BINS
    results = tau_convergence.main(["--bins", "16", "8", "--passes", "0", "4", "10", "--rows", "2"])
    families = tau_convergence.row_families(rows=2)
    assert len(results) == len(families) * 6
    for name in families:
        # the library default (8 bins, at most 4 passes at alpha 1.5) gets as close as 10 passes
        # do, or within 1e-5 (with scores of magnitude ~100 the floor is the fp32 spacing of the scores)
        assert results[(name, 8, 4)] <= max(1e-5, 1.01 * results[(name, 8, 10)]), name
    # the bins do matter: with no refinement pass the one-bin bracket's midpoint is off by more
    # when the bins are twice as wide, on the near-uniform rows that need the most passes
    near_uniform = "near-uniform 4000, spread 1e-3"
    assert results[(near_uniform, 8, 0)] > results[(near_uniform, 16, 0)] > 1e-3
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| rows | 16 bins, 0 passes | 16 bins, 4 passes | 16 bins, 10 passes |")
    assert len(table) == 2 + len(families)
    # NUM_BINS is restored for the rest of the session
    assert sys.modules["kernels.entmax"].NUM_BINS == default_bins == 8


def test_bins_must_fill_counter_words():
    with pytest.raises(SystemExit):
        tau_convergence.main(["--bins", "6"])
