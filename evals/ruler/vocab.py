"""Random keys, values and words for RULER tasks (wonderwords' word lists, like RULER)."""

from __future__ import annotations

import functools
import random
import string
import uuid

NEEDLE_TYPES = ("numbers", "words", "uuids")


@functools.lru_cache(maxsize=None)
def wonderwords_list(file_name: str) -> tuple[str, ...]:
    """One of wonderwords' bundled lists (nounlist.txt, adjectivelist.txt, verblist.txt), sorted, unique."""
    try:
        from wonderwords import random_word
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("RULER tasks need the 'wonderwords' package: pip install wonderwords") from error
    return tuple(sorted(set(random_word._get_words_from_text_file(file_name))))


def nouns() -> tuple[str, ...]:
    return wonderwords_list("nounlist.txt")


def adjectives() -> tuple[str, ...]:
    return wonderwords_list("adjectivelist.txt")


def verbs() -> tuple[str, ...]:
    return wonderwords_list("verblist.txt")


@functools.lru_cache(maxsize=1)
def single_words() -> tuple[str, ...]:
    """Nouns, adjectives and verbs together (RULER's word pool for common-words extraction)."""
    return tuple(sorted(set(nouns()) | set(adjectives()) | set(verbs())))


def random_adjective_noun(rng: random.Random) -> str:
    # RULER draws uniformly from the sorted list of every "adjective-noun" pair (about 6M strings).
    # An independent uniform adjective and noun is the same distribution without building that list.
    return f"{rng.choice(adjectives())}-{rng.choice(nouns())}"


def random_number(rng: random.Random, num_digits: int = 7) -> str:
    return str(rng.randint(10 ** (num_digits - 1), 10**num_digits - 1))


def random_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def random_needle_item(rng: random.Random, kind: str) -> str:
    """A key or value of RULER's kind: "numbers" (7 digits), "words" (adjective-noun) or "uuids"."""
    if kind == "numbers":
        return random_number(rng)
    if kind == "words":
        return random_adjective_noun(rng)
    if kind == "uuids":
        return random_uuid(rng)
    raise ValueError(f"unknown needle type {kind!r}; choose one of {list(NEEDLE_TYPES)}")


def random_variable_name(rng: random.Random, length: int) -> str:
    return "".join(rng.choices(string.ascii_uppercase, k=length))


def random_coded_word(rng: random.Random, length: int) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=length))
