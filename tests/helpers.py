"""Helpers shared by the kernel test modules (import as `from helpers import rel_error`)."""

import torch


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64 on the CPU; NaN or inf on either side fails
    the test outright (a NaN would otherwise compare as "not larger than" any tolerance)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert torch.isfinite(actual).all(), "non-finite values in the result under test"
    assert torch.isfinite(expected).all(), "non-finite values in the reference"
    scale = expected.norm().item()
    difference = (actual - expected).norm().item()
    return difference / scale if scale > 0 else difference
