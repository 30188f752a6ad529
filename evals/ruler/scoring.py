"""RULER's scoring: case-insensitive substring matching, reported in percent.

``string_match_all``: a prediction earns the fraction of its references it contains.
``string_match_part``: a prediction earns 1 if it contains any one of its references.
Task score = mean over samples x 100 (RULER's summary numbers).
"""

from __future__ import annotations

import re
from typing import Sequence

_CONTROL_CHARS = re.compile(r"[\x00-\x1f]")


def postprocess_prediction(text: str) -> str:
    """RULER's clean-up: strip, and turn control characters (tabs, etc.) into newlines."""
    return _CONTROL_CHARS.sub("\n", text.strip()).strip()


def match_all(prediction: str, references: Sequence[str]) -> float:
    _check_references(references)
    lowered = prediction.lower()
    return sum(reference.lower() in lowered for reference in references) / len(references)


def match_part(prediction: str, references: Sequence[str]) -> float:
    _check_references(references)
    lowered = prediction.lower()
    return float(any(reference.lower() in lowered for reference in references))


SAMPLE_METRICS = {"all": match_all, "part": match_part}


def score_sample(prediction: str, references: Sequence[str], metric: str) -> float:
    """One sample's score in [0, 1] after RULER's clean-up of the prediction."""
    if metric not in SAMPLE_METRICS:
        raise ValueError(f"metric={metric!r}; choose one of {list(SAMPLE_METRICS)}")
    return SAMPLE_METRICS[metric](postprocess_prediction(prediction), references)


def string_match_all(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    return _percent(predictions, references, "all")


def string_match_part(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    return _percent(predictions, references, "part")


def _percent(predictions, references, metric: str) -> float:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("no predictions to score")
    return 100.0 * sum(score_sample(p, r, metric) for p, r in zip(predictions, references)) / len(predictions)


def _check_references(references: Sequence[str]) -> None:
    if isinstance(references, str) or not references:
        raise ValueError(f"references must be a non-empty list of strings, got {references!r}")
