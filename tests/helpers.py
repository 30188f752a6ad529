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


def exact_threshold(y: torch.Tensor, alpha: float = 1.5) -> torch.Tensor:
    """Per row, the t with sum_j [y_j - t]_+^(1 / (alpha - 1)) = 1, by bisection in float64 (its
    lower end, where the mass is >= 1). The root lies in [max - 1, max]: at max - 1 the largest
    entry alone has mass 1."""
    y = y.double().cpu()
    hi = y.amax(-1)
    lo = hi - 1
    for _ in range(100):
        mid = (lo + hi) / 2
        above = ((y - mid[:, None]).clamp_min(0) ** (1 / (alpha - 1))).sum(-1) >= 1
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return lo
