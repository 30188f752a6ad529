"""Counter-based pseudo-randomness: a value derived from a tuple of integers, with no state.

Training windows, the train/val split and the synthetic mixture all draw their randomness from
(seed, index, purpose) through these functions, so any sample can be recomputed on its own: that
is what makes resuming and sharding across ranks exact.
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15


def mix64(value: int) -> int:
    """SplitMix64's finalizer: a bijection on 64-bit integers with good avalanche."""
    value &= _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def hash_ints(*values: int) -> int:
    """A 64-bit hash of a sequence of integers (order matters)."""
    state = 0
    for value in values:
        state = mix64(state + _GOLDEN_GAMMA + (int(value) & _MASK64))
    return state


def uniform_int(upper: int, *values: int) -> int:
    """An integer in [0, upper) determined by ``values``; the modulo bias is below 2**-40 for upper < 2**24."""
    if upper < 1:
        raise ValueError(f"upper must be >= 1, got {upper}")
    return hash_ints(*values) % upper


def unit_float(*values: int) -> float:
    """A float in [0, 1) determined by ``values`` (53 random bits)."""
    return (hash_ints(*values) >> 11) * (1.0 / (1 << 53))
