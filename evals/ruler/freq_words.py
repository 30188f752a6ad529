"""RULER's frequent words extraction (fwe): coded words drawn from a Zipf law; name the three most
frequent (the most frequent one is the noise word '...', which the question says to ignore).

Vocabulary: ``length // 50`` random 6-letter words; word of rank k appears
``int(num_words * k**-alpha / zeta(alpha))`` times (RULER's rule). Size counts entries of the text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from evals.ruler import constants, vocab
from evals.ruler.base import RulerTask


def riemann_zeta(s: float, terms: int = 64) -> float:
    """zeta(s) for s > 1: a partial sum plus the Euler-Maclaurin tail (error far below 1e-12)."""
    if s <= 1:
        raise ValueError(f"alpha={s} must be > 1 for a Zipf distribution")
    partial = sum(k ** -s for k in range(1, terms))
    n = float(terms)
    tail = n ** (1 - s) / (s - 1) + 0.5 * n**-s + s * n ** (-s - 1) / 12 - s * (s + 1) * (s + 2) * n ** (-s - 3) / 720
    return partial + tail


@dataclass
class FweDraw:
    vocab: list[str]  # rank order; vocab[0] is the noise word '...'
    shuffle_seed: int


class FreqWordsTask(RulerTask):
    family = "freq_words_extraction"

    def __init__(self, name: str, tokenizer, *, alpha: float = 2.0, coded_wordlen: int = 6,
                 vocab_size: int | None = None, tokens_to_generate: int | None = None):
        super().__init__(name, tokenizer, tokens_to_generate)
        self.alpha = float(alpha)
        self.zeta = riemann_zeta(self.alpha)
        self.coded_wordlen = coded_wordlen
        self.vocab_size = vocab_size

    def draw(self, rng: random.Random, length: int, index: int) -> FweDraw:
        size = self.vocab_size or max(length // 50, 5)
        words: set[str] = set()
        while len(words) < size:
            words.add(vocab.random_coded_word(rng, self.coded_wordlen))
        ranked = sorted(words)
        rng.shuffle(ranked)
        ranked[0] = "..."
        return FweDraw(ranked, rng.getrandbits(64))

    def counts(self, num_words: int, vocab_size: int) -> list[int]:
        """RULER's Zipf counts for ``num_words``: rank k appears int(num_words * k^-alpha / zeta) times."""
        return [int(num_words * k ** -self.alpha / self.zeta) for k in range(1, vocab_size + 1)]

    def counts_for_entries(self, num_entries: int, vocab_size: int) -> list[int]:
        """Counts summing to exactly ``num_entries``: RULER's counts for the smallest ``num_words`` that
        reaches it, minus the surplus taken one by one from the rarest words (the top ranks, hence the
        answer, are untouched). One more entry is one more word of text, so sizing is precise."""
        def total(num_words: int) -> int:
            return sum(self.counts(num_words, vocab_size))

        lo, hi = 0, max(num_entries, 1)
        while total(hi) < num_entries:
            lo, hi = hi, 2 * hi
        while hi - lo > 1:  # smallest num_words whose total reaches num_entries lies in (lo, hi]
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if total(mid) < num_entries else (lo, mid)
        counts = self.counts(hi if num_entries > 0 else 0, vocab_size)
        surplus = sum(counts) - num_entries
        # never touch ranks 1-3 (the answer); the noise word '...' (rank 0) is always the most frequent
        removable = [0] + list(range(4, vocab_size))
        while surplus > 0:
            for rank in reversed(removable):
                if surplus and counts[rank] > 0:
                    counts[rank] -= 1
                    surplus -= 1
        return counts

    def render(self, draw: FweDraw, size: int) -> tuple[str, dict]:
        entries = [word for word, count in zip(draw.vocab, self.counts_for_entries(size, len(draw.vocab))) for _ in range(count)]
        random.Random(draw.shuffle_seed).shuffle(entries)
        prompt = constants.FWE_TEMPLATE.format(context=" ".join(entries)) + constants.FWE_ANSWER_PREFIX
        return prompt, {"answers": draw.vocab[1:4], "alpha": self.alpha, "vocab_size": len(draw.vocab)}
