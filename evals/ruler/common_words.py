"""RULER's common words extraction (cwe): a numbered word list where ``num_cw`` words appear
``freq_cw`` times and every other word at most ``freq_ucw`` times; name the common ones.

Like RULER, a solved example comes first, and below 4096 tokens the repeat counts shrink (example
3/1, question 6/1; otherwise example 10/3, question ``freq_cw``/``freq_ucw``). Size is the number
of uncommon list entries, so the list can stop after any entry: the last uncommon word may then
appear fewer than ``freq_ucw`` times, which keeps the common words exactly as common.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from evals.ruler import constants, vocab
from evals.ruler.base import RulerTask

SHORT_CONTEXT = 4096  # RULER's switch between the short and the standard repeat counts


@dataclass
class CweDraw:
    common: list[str]
    word_seed: int  # order of the uncommon words: a stream, so more size only appends words
    shuffle_seed: int
    freq_cw: int
    freq_ucw: int
    example: str
    uncommon: list[str] = field(default_factory=list)  # grown on demand from word_seed


class CommonWordsTask(RulerTask):
    family = "common_words_extraction"

    def __init__(self, name: str, tokenizer, *, freq_cw: int = 30, freq_ucw: int = 3, num_cw: int = 10,
                 num_fewshot: int = 1, tokens_to_generate: int | None = None):
        super().__init__(name, tokenizer, tokens_to_generate)
        if not freq_cw > freq_ucw >= 1:
            raise ValueError(f"need freq_cw > freq_ucw >= 1, got freq_cw={freq_cw}, freq_ucw={freq_ucw}")
        self.freq_cw, self.freq_ucw, self.num_cw, self.num_fewshot = freq_cw, freq_ucw, num_cw, num_fewshot

    def draw(self, rng: random.Random, length: int, index: int) -> CweDraw:
        if length < SHORT_CONTEXT:
            example_counts, (freq_cw, freq_ucw) = (20, 3, 1), (6, 1)
        else:
            example_counts, (freq_cw, freq_ucw) = (40, 10, 3), (self.freq_cw, self.freq_ucw)
        examples = [self._example(rng, *example_counts) for _ in range(self.num_fewshot)]
        words = list(vocab.single_words())
        common = rng.sample(words, self.num_cw)
        return CweDraw(common, rng.getrandbits(64), rng.getrandbits(64), freq_cw, freq_ucw,
                       "".join(example + "\n" for example in examples))

    def _example(self, rng: random.Random, num_words: int, freq_cw: int, freq_ucw: int) -> str:
        chosen = rng.sample(vocab.single_words(), num_words)
        common, uncommon = chosen[:self.num_cw], chosen[self.num_cw:]
        entries = common * freq_cw + uncommon * freq_ucw
        rng.shuffle(entries)
        return self._question(entries) + " " + numbered(common)

    def _question(self, entries: list[str]) -> str:
        return constants.CWE_TEMPLATE.format(context=numbered(entries)) + constants.CWE_ANSWER_PREFIX

    def _uncommon_words(self, draw: CweDraw, count: int) -> list[str]:
        if len(draw.uncommon) < count:
            rng = random.Random(draw.word_seed)
            pool = [word for word in vocab.single_words() if word not in draw.common]
            rng.shuffle(pool)
            # past the ~8.7k single words, RULER switches to a bigger English list; offline we
            # continue with adjective-noun compounds, which are just as distinct
            seen = set(pool) | set(draw.common)
            while len(pool) < count:
                word = vocab.random_adjective_noun(rng)
                if word not in seen:
                    seen.add(word)
                    pool.append(word)
            draw.uncommon = pool
        return draw.uncommon[:count]

    def render(self, draw: CweDraw, size: int) -> tuple[str, dict]:
        num_uncommon = math.ceil(size / draw.freq_ucw)
        uncommon = [word for word in self._uncommon_words(draw, num_uncommon) for _ in range(draw.freq_ucw)]
        entries = draw.common * draw.freq_cw + uncommon[:size]
        random.Random(draw.shuffle_seed).shuffle(entries)
        return draw.example + self._question(entries), {
            "answers": list(draw.common), "freq_cw": draw.freq_cw, "freq_ucw": draw.freq_ucw,
            "num_uncommon_words": num_uncommon,
        }


def numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {word}" for i, word in enumerate(words))
