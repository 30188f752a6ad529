"""scripts/tile_lists.py: the per-pass tile-list sizes behind docs/kernels.md's fourth-session note."""

import math

import pytest
import torch

from kernels import reference
from scripts import tile_lists
from scripts.bench_attention import make_qk


def test_lists_shrink_and_match_the_reference_sparsity():
    q, k = make_qk(512, 64, 2.0, 3, heads=2)  # RoPE locality: tiles far from the diagonal drop out
    q, k = q[0], k[0]
    fractions = tile_lists.list_fractions(q, k, block=32)
    assert fractions["dense"] == 1.0
    # each list holds the next
    for chain in (("dense", "candidates", "after histogram, at most", "after refinement", "non-zero"),
                  ("candidates", "candidates, 16-row groups"),
                  ("after refinement", "after refinement, 16-row groups", "non-zero")):
        values = [fractions[stage] for stage in chain]
        assert all(a >= b for a, b in zip(values, values[1:])), (chain, fractions)
    assert fractions["candidates"] > fractions["after refinement"] > fractions["non-zero"] > 0
    # non-zero tiles, independently: kernels.reference's block sparsity of the causal probabilities
    allowed = torch.ones(512, 512, dtype=torch.bool).tril()
    scores = (q.double() @ k.double().transpose(1, 2) / math.sqrt(64)).masked_fill(~allowed, -math.inf)
    sparsity = reference.block_sparsity(reference.entmax(scores, alpha=1.5), allowed, block_m=32, block_n=32)
    assert fractions["non-zero"] == pytest.approx(1 - sparsity)


def test_cli_table(capsys):
    results = tile_lists.main(["--n", "256", "--d", "64", "--regimes", "trained", "0.5", "--heads", "1",
                               "--tile-stride", "1"])
    assert set(results) == {"trained", "0.5"}
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "| regime | " + " | ".join(tile_lists.STAGES) + " |"
    assert len(out) == 5


def test_rejects_ragged_n():
    with pytest.raises(ValueError, match="multiple of block"):
        tile_lists.list_fractions(torch.zeros(1, 100, 16), torch.zeros(1, 100, 16))
