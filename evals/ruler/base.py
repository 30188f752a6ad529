"""What every RULER task shares: the sample record, seeding, and fitting a prompt to a length."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

from evals.ruler import constants
from evals.ruler.fitting import fit_to_budget


@dataclass
class RulerSample:
    task: str
    index: int
    length: int  # requested sequence length: prompt tokens + generation budget (RULER's convention)
    prompt: str  # task template + answer prefix: the text the model continues
    answers: list[str]
    metric: str  # "all": every answer must appear in the prediction; "part": any one
    tokens_to_generate: int
    num_prompt_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_rng(seed: int, task: str, length: int, index: int) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`, so samples do not depend on PYTHONHASHSEED,
    # and sample i is the same whether 1 or 100 samples are drawn.
    return random.Random(f"{seed}/{task}/{length}/{index}")


class RulerTask(ABC):
    """One RULER task. Subclasses implement ``draw`` (the random content of a sample, fixed before
    sizing) and ``render`` (the prompt for a draw at a haystack size)."""

    family: str = ""

    def __init__(self, name: str, tokenizer, tokens_to_generate: int | None = None):
        self.name = name
        self.tokenizer = tokenizer
        self.tokens_to_generate = (constants.TOKENS_TO_GENERATE[self.family]
                                   if tokens_to_generate is None else int(tokens_to_generate))
        self.metric = constants.METRIC[self.family]
        self._size_hints: dict[int, int] = {}

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    @abstractmethod
    def draw(self, rng: random.Random, length: int, index: int) -> Any:
        """The random content of one sample (needles, keys, words), fixed before the haystack is sized."""

    @abstractmethod
    def render(self, draw: Any, size: int) -> tuple[str, dict[str, Any]]:
        """Prompt text and a payload with at least ``answers`` (list of str)."""

    def prompt_budget(self, draw: Any, length: int) -> int:
        return length - self.tokens_to_generate

    def sample(self, index: int, length: int, seed: int = 42) -> RulerSample:
        if length <= self.tokens_to_generate:
            raise ValueError(f"length={length} must exceed task {self.name}'s generation budget "
                             f"({self.tokens_to_generate} tokens)")
        draw = self.draw(sample_rng(seed, self.name, length, index), length, index)
        fitted = fit_to_budget(lambda size: self.render(draw, size), self.count_tokens,
                               self.prompt_budget(draw, length), hint=self._size_hints.get(length),
                               what=f"task {self.name} at length {length}")
        self._size_hints[length] = fitted.size
        payload = dict(fitted.payload)
        answers = payload.pop("answers")
        payload["haystack_size"] = fitted.size
        return RulerSample(task=self.name, index=index, length=length, prompt=fitted.text, answers=list(answers),
                           metric=self.metric, tokens_to_generate=self.tokens_to_generate,
                           num_prompt_tokens=fitted.num_tokens, meta=payload)

    def samples(self, length: int, num_samples: int, seed: int = 42) -> list[RulerSample]:
        return [self.sample(index, length, seed) for index in range(num_samples)]
