"""docs/experiments/dense_pass_width.py: its stripped-down dense pass gives the maxima the lists need,
with 64- and 128-row programs alike (under the interpreter on a CPU; compiled on a GPU)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "docs" / "experiments"))

import dense_pass_width  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_every_width_matches_float64_maxima():
    gen = torch.Generator().manual_seed(3)
    q, k = (torch.randn(2, 256, 64, generator=gen).mul(4).to(DEVICE, torch.bfloat16) for _ in range(2))
    dense_pass_width.check(q, k)  # raises on a wrong or missing maximum
    rows, tiles = dense_pass_width.dense_max(q, k, 128, 8)
    assert torch.isinf(tiles[:, 0, 1:]).all() and torch.isfinite(tiles[:, 3, :4]).all()  # causal: the upper tiles stay -inf


def test_check_catches_a_wrong_maximum(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    q, k = (torch.randn(1, 128, 64, generator=gen).to(DEVICE, torch.bfloat16) for _ in range(2))
    real = dense_pass_width.reference
    monkeypatch.setattr(dense_pass_width, "reference", lambda q, k: tuple(x * 1.01 for x in real(q, k)))
    with pytest.raises(AssertionError, match="maxima off by"):
        dense_pass_width.check(q, k)


def test_block_rows_must_divide_n():
    q = torch.zeros(1, 192, 64, dtype=torch.bfloat16, device=DEVICE)
    with pytest.raises(ValueError, match="multiple of block_m=128"):
        dense_pass_width.dense_max(q, q, 128, 8)
