"""RULER's needle-in-a-haystack family (niah_single_*, niah_multikey_*, niah_multivalue, niah_multiquery).

A needle reads "One of the special magic numbers for {key} is: {value}."; the question asks for
the values of one or more keys. Haystacks: "essay" (sentences of essays; needles go between
sentences at depths drawn from RULER's 40-point grid), "noise" (the repeated filler line) or
"needle" (distractor needles with other keys; needles go between lines at uniform random depths).
The haystack size is counted in characters, so the prompt lands within a token or two of its budget.
``depths`` fixes the needle depths (the needle grid does); ``depth_mode="tokens"`` places needles at
that fraction of the haystack's tokens (nearest unit boundary) instead of RULER's fraction of the
number of sentences or lines ("units").
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from evals.ruler import constants, haystack, vocab
from evals.ruler.base import RulerTask

HAYSTACK_TYPES = ("essay", "noise", "needle")
DEPTH_MODES = ("units", "tokens")


@dataclass
class NiahDraw:
    keys: list[str]
    needles: list[str]  # in the order they are placed
    depths: list[float]  # percent, one per needle
    answers: list[str]
    query: str
    distractor_seed: int


class NiahTask(RulerTask):
    family = "niah"

    def __init__(self, name: str, tokenizer, *, type_haystack: str = "essay", type_needle_k: str = "words",
                 type_needle_v: str = "numbers", num_needle_k: int = 1, num_needle_v: int = 1,
                 num_needle_q: int = 1, depths: list[float] | None = None, depth_mode: str = "units",
                 haystack_dir=None, tokens_to_generate: int | None = None):
        super().__init__(name, tokenizer, tokens_to_generate)
        if type_haystack not in HAYSTACK_TYPES:
            raise ValueError(f"type_haystack={type_haystack!r}; choose one of {list(HAYSTACK_TYPES)}")
        for argument, kind in (("type_needle_k", type_needle_k), ("type_needle_v", type_needle_v)):
            if kind not in vocab.NEEDLE_TYPES:
                raise ValueError(f"{argument}={kind!r}; choose one of {list(vocab.NEEDLE_TYPES)}")
        self.type_haystack = type_haystack
        self.type_needle_k = type_needle_k
        self.type_needle_v = type_needle_v
        self.num_needle_q = num_needle_q
        self.num_needle_k = max(num_needle_k, num_needle_q)  # every queried key needs a needle
        self.num_needle_v = num_needle_v
        self.fixed_depths = None if depths is None else [float(d) for d in depths]
        if self.fixed_depths is not None and len(self.fixed_depths) != self.num_needle_k * num_needle_v:
            raise ValueError(f"depths has {len(self.fixed_depths)} entries but task {name} places "
                             f"{self.num_needle_k * num_needle_v} needles")
        if depth_mode not in DEPTH_MODES:
            raise ValueError(f"depth_mode={depth_mode!r}; choose one of {list(DEPTH_MODES)}")
        self.depth_mode = depth_mode
        self.essay = haystack.load_essay_haystack(haystack_dir) if type_haystack == "essay" else None
        self.template, self.answer_prefix, self.value_word = self._templates()

    def _templates(self) -> tuple[str, str, str]:
        template, prefix, value_word = constants.NIAH_TEMPLATE, constants.NIAH_ANSWER_PREFIX, self.type_needle_v
        if self.num_needle_q * self.num_needle_v == 1:
            # RULER's grammar for a single answer, applied to the template text in its order
            for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
                template, prefix = template.replace(old, new), prefix.replace(old, new)
            value_word = value_word[:-1]
        return template, prefix, value_word

    def draw(self, rng: random.Random, length: int, index: int) -> NiahDraw:
        keys, values, needles = [], [], []
        for _ in range(self.num_needle_k):
            key = vocab.random_needle_item(rng, self.type_needle_k)
            while key in keys:
                key = vocab.random_needle_item(rng, self.type_needle_k)
            keys.append(key)
            values.append([vocab.random_needle_item(rng, self.type_needle_v) for _ in range(self.num_needle_v)])
            needles += [constants.NIAH_NEEDLE.format(type_needle_v=self.type_needle_v, key=key, value=value)
                        for value in values[-1]]
        rng.shuffle(needles)
        depths = self.fixed_depths or self._random_depths(rng, len(needles))
        queried = rng.sample(range(self.num_needle_k), self.num_needle_q)
        queries = [keys[i] for i in queried]
        query = queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]
        answers = [value for i in queried for value in values[i]]
        return NiahDraw(keys, needles, depths, answers, query, rng.getrandbits(64))

    def _random_depths(self, rng: random.Random, count: int) -> list[float]:
        if self.type_haystack == "essay":
            return [float(d) for d in rng.sample(constants.DEPTH_GRID, count)]
        # RULER puts needles at uniformly random lines of noise/needle haystacks
        return [100 * rng.random() for _ in range(count)]

    def render(self, draw: NiahDraw, size: int) -> tuple[str, dict]:
        if self.type_haystack == "essay":
            units = haystack.essay_sentences(self.essay.text, size)
            separator = " "
        elif self.type_haystack == "noise":
            units, separator = haystack.noise_lines(size), "\n"
        else:
            units, separator = self._distractor_lines(draw, size), "\n"
        weights = self._token_lengths(units, separator) if self.depth_mode == "tokens" else None
        context = separator.join(haystack.insert_at_depths(units, draw.needles, draw.depths, weights))
        head = self.template.split("{context}")[0].format(type_needle_v=self.value_word)
        prompt = (self.template.format(type_needle_v=self.value_word, context=context, query=draw.query)
                  + self.answer_prefix.format(type_needle_v=self.value_word, query=draw.query))
        return prompt, {
            "answers": draw.answers,
            "needles": draw.needles,
            "depths": draw.depths,
            # where each needle starts and where the context starts/ends, in prompt characters
            "needle_char_offsets": [len(head) + context.index(needle) for needle in draw.needles],
            "context_char_span": [len(head), len(head) + len(context)],
            "haystack": self.type_haystack,
            "haystack_source": self.essay.source if self.essay else self.type_haystack,
        }

    def _token_lengths(self, units: list[str], separator: str) -> list[int]:
        # each unit with its separator, as it appears in the context
        pieces = [separator + unit for unit in units]
        encode_batch = getattr(self.tokenizer, "encode_batch", None)
        encoded = encode_batch(pieces) if encode_batch else [self.tokenizer.encode(piece) for piece in pieces]
        return [len(ids) for ids in encoded]

    def _distractor_lines(self, draw: NiahDraw, num_chars: int) -> list[str]:
        """Needles for other keys, drawn from the sample's own stream so a larger size only adds lines."""
        rng = random.Random(draw.distractor_seed)
        lines, total = [], 0
        while total < num_chars:
            key = vocab.random_needle_item(rng, self.type_needle_k)
            value = vocab.random_needle_item(rng, self.type_needle_v)
            if key in draw.keys:  # a distractor must never answer the question
                continue
            lines.append(constants.NIAH_NEEDLE.format(type_needle_v=self.type_needle_v, key=key, value=value))
            total += len(lines[-1]) + 1
        return [line for line in "\n".join(lines)[:num_chars].split("\n") if line]
