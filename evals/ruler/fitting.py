"""Size a haystack so the prompt hits a token budget on *our* tokenizer.

A task renders its prompt from a haystack size (characters, words or documents; more size, more
tokens). ``fit_to_budget`` finds the largest size whose prompt still fits the budget. Token counts
grow almost linearly with size, so the search interpolates (a handful of tokenizations even at
128k tokens) and falls back to bisection whenever interpolation stops halving the bracket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

Render = Callable[[int], tuple[str, Any]]


@dataclass
class Fitted:
    size: int
    text: str
    payload: Any
    num_tokens: int


class BudgetTooSmall(ValueError):
    """The requested length cannot hold even the template with an empty haystack."""


def fit_to_budget(render: Render, count_tokens: Callable[[str], int], budget: int, *,
                  hint: int | None = None, what: str = "prompt") -> Fitted:
    """Largest ``size >= 0`` with ``count_tokens(render(size)[0]) <= budget``.

    ``hint`` is a size expected to be near the answer (e.g. the previous sample's), which saves
    most of the search.
    """
    evaluated: dict[int, Fitted] = {}

    def evaluate(size: int) -> Fitted:
        if size not in evaluated:
            text, payload = render(size)
            evaluated[size] = Fitted(size, text, payload, count_tokens(text))
        return evaluated[size]

    empty = evaluate(0)
    if empty.num_tokens > budget:
        raise BudgetTooSmall(
            f"{what}: the prompt needs {empty.num_tokens} tokens with an empty haystack, more than the "
            f"budget of {budget} tokens; request a longer length."
        )
    lo, hi = _bracket(evaluate, budget, hint)
    previous_width = hi.size - lo.size
    bisect_next = False
    while hi.size - lo.size > 1:
        if bisect_next:
            guess = (lo.size + hi.size) // 2
        else:
            slope = (hi.num_tokens - lo.num_tokens) / (hi.size - lo.size)
            guess = lo.size + int((budget - lo.num_tokens) / slope) if slope > 0 else (lo.size + hi.size) // 2
        guess = min(max(guess, lo.size + 1), hi.size - 1)
        probe = evaluate(guess)
        if probe.num_tokens <= budget:
            lo = probe
        else:
            hi = probe
        width = hi.size - lo.size
        bisect_next = width > previous_width // 2
        previous_width = width
    return lo


def _bracket(evaluate: Callable[[int], Fitted], budget: int, hint: int | None) -> tuple[Fitted, Fitted]:
    """A size that fits and a larger one that does not."""
    empty = evaluate(0)
    lo = empty
    size = max(hint or 64, 1)
    while True:
        probe = evaluate(size)
        if probe.num_tokens > budget:
            return lo, probe
        lo = probe
        # extrapolate with the tokens-per-size rate seen so far, overshooting a little to bracket
        rate = max((probe.num_tokens - empty.num_tokens) / probe.size, 1e-6)
        needed = (budget - probe.num_tokens) / rate
        size = probe.size + int(max(1.1 * needed, 0.02 * probe.size)) + 1
