"""RULER's variable tracking (vt): follow a chain of assignments VAR B = VAR A, ... back to a value.

Each chain starts "VAR XXXXX = 12345" and continues "VAR YYYYY = VAR XXXXX" for ``num_hops`` hops;
statements keep their order but sit at random lines of the noise haystack (or between essay
sentences). The answer is every variable of the first chain. Like RULER, the prompt opens with one
solved example (3-letter names, about 500 tokens) before the real question.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from evals.ruler import constants, haystack, vocab
from evals.ruler.base import RulerTask
from evals.ruler.fitting import fit_to_budget

EXAMPLE_BUDGET = 500  # tokens for the solved example, as RULER generates it


@dataclass
class Chains:
    names: list[list[str]]  # per chain: the variables in assignment order
    statements: list[str]  # every chain's statements, chain after chain
    depths: list[float]  # percent, one per statement; non-decreasing within a chain
    value: str


@dataclass
class VtDraw:
    chains: Chains
    example: str  # the solved example that opens the prompt (empty while sizing it)


class VariableTrackingTask(RulerTask):
    family = "variable_tracking"

    def __init__(self, name: str, tokenizer, *, num_chains: int = 1, num_hops: int = 4,
                 type_haystack: str = "noise", haystack_dir=None, tokens_to_generate: int | None = None):
        super().__init__(name, tokenizer, tokens_to_generate)
        if type_haystack not in ("noise", "essay"):
            raise ValueError(f"type_haystack={type_haystack!r} for variable tracking; choose 'noise' or 'essay'")
        if num_chains < 1 or num_hops < 1:
            raise ValueError(f"num_chains={num_chains} and num_hops={num_hops} must both be >= 1")
        self.num_chains = num_chains
        self.num_hops = num_hops
        self.type_haystack = type_haystack
        self.essay = haystack.load_essay_haystack(haystack_dir) if type_haystack == "essay" else None

    def _draw_chains(self, rng: random.Random, name_length: int, num_hops: int) -> Chains:
        needed = self.num_chains * (num_hops + 1)
        pool: list[str] = []
        while len(pool) < needed:
            name = vocab.random_variable_name(rng, name_length)
            if name not in pool:
                pool.append(name)
        names, statements, depths = [], [], []
        value = str(rng.randint(10000, 99999))
        for chain_index in range(self.num_chains):
            chain = pool[chain_index * (num_hops + 1):(chain_index + 1) * (num_hops + 1)]
            start = value if chain_index == 0 else str(rng.randint(10000, 99999))
            names.append(chain)
            statements.append(f"VAR {chain[0]} = {start}")
            statements += [f"VAR {chain[j + 1]} = VAR {chain[j]}" for j in range(num_hops)]
            depths += sorted(100 * rng.random() for _ in chain)
        return Chains(names, statements, depths, value)

    def draw(self, rng: random.Random, length: int, index: int) -> VtDraw:
        example_chains = self._draw_chains(rng, name_length=3, num_hops=min(10, self.num_hops))
        chains = self._draw_chains(rng, name_length=5, num_hops=self.num_hops)
        example = fit_to_budget(lambda size: self._example_text(example_chains, size), self.count_tokens,
                                EXAMPLE_BUDGET, what=f"task {self.name}: solved example").text
        return VtDraw(chains, example)

    def _example_text(self, chains: Chains, size: int) -> tuple[str, dict]:
        question = self._question(chains, size)
        return question + " " + " ".join(chains.names[0]) + "\n", {}

    def _question(self, chains: Chains, size: int) -> str:
        if self.type_haystack == "essay":
            units = haystack.essay_sentences(self.essay.text, size)
            statements = [statement + "." for statement in chains.statements]
            context = " ".join(haystack.insert_at_depths(units, statements, chains.depths))
        else:
            units = haystack.noise_lines(size)
            context = "\n".join(haystack.insert_at_depths(units, chains.statements, chains.depths))
        num_v = len(chains.names[0])
        return (constants.VT_TEMPLATE.format(context=context, query=chains.value)
                + constants.VT_ANSWER_PREFIX.format(num_v=num_v, query=chains.value))

    def render(self, draw: VtDraw, size: int) -> tuple[str, dict]:
        prompt = draw.example + "\n" + self._question(draw.chains, size)
        return prompt, {"answers": draw.chains.names[0], "value": draw.chains.value,
                        "statements": draw.chains.statements}
