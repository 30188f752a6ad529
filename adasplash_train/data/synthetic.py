"""Synthetic long-context documents that teach retrieval (ARCHITECTURE.md section 6).

Each generator returns exactly ``length`` tokens: ``[eot]`` (one document, so attention may reach
anywhere in it), a body made of corpus filler with the task's statements scattered through it,
a question, and the answer as the final tokens. Three tasks:

- ``kv_retrieval``: "The value of key K is V." facts in filler; asked for one key's value.
- ``copy``: a passage of corpus text between markers, then the same passage again.
- ``variable_tracking``: a chain "VAR A = 12345", "VAR B = VAR A", ... plus a distractor chain;
  asked which variables hold the chain's value.

Pieces are tokenized separately and concatenated as token lists, which is what makes the length
exact with a BPE tokenizer (joining text first would change tokens at the seams).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

import numpy as np

TASKS = ("kv_retrieval", "copy", "variable_tracking")
_MAX_FACTS = 32
_MAX_HOPS = 4


@dataclass
class SyntheticSample:
    tokens: np.ndarray  # (length,) int64, starts with eot, ends with the answer
    task: str
    answer_ids: list[int]  # the final tokens of ``tokens``
    answer: str  # the answer as text (for kv and variable tracking: the value / the names)


class SyntheticTasks:
    """Builds synthetic documents of an exact token length from a tokenizer and corpus filler."""

    def __init__(self, tokenizer, filler_tokens, tasks: tuple[str, ...] = TASKS):
        """``filler_tokens``: a token array, or anything with len() and slicing such as a TokenSplit."""
        unknown = [task for task in tasks if task not in TASKS]
        if unknown or not tasks:
            raise ValueError(f"unknown synthetic task(s) {unknown or tasks!r}; choose from {list(TASKS)}.")
        self.tokenizer = tokenizer
        self.eot_id = tokenizer.eot_id
        self.filler_tokens = filler_tokens
        self.tasks = tuple(tasks)
        if len(filler_tokens) < 2:
            raise ValueError("synthetic tasks need corpus tokens for filler text; the train split is empty.")

    def sample(self, length: int, rng: random.Random) -> SyntheticSample:
        task = self.tasks[rng.randrange(len(self.tasks))]
        return getattr(self, task)(length, rng)

    # ------------------------------------------------------------------ pieces

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def _filler(self, count: int, rng: random.Random) -> list[int]:
        """``count`` corpus tokens from random places, with eot removed so the sample stays one document."""
        corpus = self.filler_tokens
        taken: list[int] = []
        while len(taken) < count:
            need = count - len(taken)
            span = min(len(corpus), need + need // 8 + 16)
            start = rng.randrange(len(corpus) - span + 1)
            chunk = np.asarray(corpus[start:start + span], dtype=np.int64)
            taken.extend(chunk[chunk != self.eot_id][:need].tolist())
        return taken

    def _scatter(self, statements: list[list[int]], filler_count: int, rng: random.Random) -> list[int]:
        """Filler of ``filler_count`` tokens with the statements inserted, in order, at random cuts."""
        filler = self._filler(filler_count, rng)
        cuts = sorted(rng.randint(0, filler_count) for _ in statements)
        body: list[int] = []
        previous = 0
        for cut, statement in zip(cuts, statements):
            body.extend(filler[previous:cut])
            body.extend(statement)
            previous = cut
        body.extend(filler[previous:])
        return body

    def _assemble(self, length: int, statements: list[list[int]], question: list[int],
                  answer: list[int], rng: random.Random) -> np.ndarray | None:
        filler_count = length - 1 - sum(map(len, statements)) - len(question) - len(answer)
        if filler_count < 0:
            return None
        tokens = [self.eot_id] + self._scatter(statements, filler_count, rng) + question + answer
        return np.asarray(tokens, dtype=np.int64)

    @staticmethod
    def _too_short(task: str, length: int) -> ValueError:
        return ValueError(
            f"seq_len {length - 1} is too short for the synthetic task {task!r}; "
            "use a longer model.max_seq_len or set data.synthetic_fraction=0."
        )

    @staticmethod
    def _random_word(rng: random.Random, alphabet: str, size: int = 5) -> str:
        return "".join(rng.choice(alphabet) for _ in range(size))

    # ------------------------------------------------------------------ tasks

    def kv_retrieval(self, length: int, rng: random.Random) -> SyntheticSample:
        # Roughly one fact per 256 tokens of context, at least one, so longer windows get more facts.
        num_facts = rng.randint(1, max(1, min(_MAX_FACTS, length // 256)))
        keys: list[str] = []
        while len(keys) < num_facts:
            key = self._random_word(rng, string.ascii_lowercase)
            if key not in keys:
                keys.append(key)
        values = [str(rng.randrange(100_000, 1_000_000)) for _ in keys]
        target = rng.randrange(num_facts)
        question = self._encode(f"\nQuestion: what is the value of key {keys[target]}? Answer:")
        answer = self._encode(f" {values[target]}")
        facts = [self._encode(f"\nThe value of key {key} is {value}.\n") for key, value in zip(keys, values)]
        # Drop other facts until they fit; the asked one always stays.
        while True:
            order = list(range(len(facts)))
            rng.shuffle(order)
            tokens = self._assemble(length, [facts[i] for i in order], question, answer, rng)
            if tokens is not None:
                return SyntheticSample(tokens, "kv_retrieval", answer, values[target])
            if len(facts) == 1:
                raise self._too_short("kv_retrieval", length)
            drop = next(i for i in range(len(facts)) if i != target)
            facts.pop(drop)
            target -= drop < target

    def copy(self, length: int, rng: random.Random) -> SyntheticSample:
        opening = self._encode("\nCopy the passage between the markers.\n<<<\n")
        closing = self._encode("\n>>>\nCopy:\n")
        room = length - 1 - len(opening) - len(closing)
        longest = room // 2
        if longest < 1:
            raise self._too_short("copy", length)
        passage_len = rng.randint(max(1, longest // 4), longest)
        passage = self._filler(passage_len, rng)
        # Corpus filler before the instruction takes up whatever the two copies leave.
        lead_in = self._filler(room - 2 * passage_len, rng)
        tokens = [self.eot_id] + lead_in + opening + passage + closing + passage
        return SyntheticSample(np.asarray(tokens, dtype=np.int64), "copy", passage,
                               self.tokenizer.decode(passage))

    def variable_tracking(self, length: int, rng: random.Random) -> SyntheticSample:
        hops = rng.randint(1, _MAX_HOPS)
        distractor_hops = rng.randint(1, _MAX_HOPS)
        names: list[str] = []
        while len(names) < hops + distractor_hops:
            name = self._random_word(rng, string.ascii_uppercase)
            if name not in names:
                names.append(name)
        value = rng.randrange(10_000, 100_000)
        distractor_value = value
        while distractor_value == value:
            distractor_value = rng.randrange(10_000, 100_000)
        chain, distractor = names[:hops], names[hops:]
        question = self._encode(f"\nQuestion: which variables are assigned the value {value}? Answer:")
        while True:
            answer_text = " ".join(chain)
            answer = self._encode(" " + answer_text)
            statements = _interleave(self._chain_statements(chain, value),
                                     self._chain_statements(distractor, distractor_value), rng)
            tokens = self._assemble(length, statements, question, answer, rng)
            if tokens is not None:
                return SyntheticSample(tokens, "variable_tracking", answer, answer_text)
            # Too long: shorten the distractor first, then the chain itself.
            if distractor:
                distractor = distractor[:-1]
            elif len(chain) > 1:
                chain = chain[:-1]
            else:
                raise self._too_short("variable_tracking", length)

    def _chain_statements(self, chain: list[str], value: int) -> list[list[int]]:
        if not chain:
            return []
        statements = [self._encode(f"\nVAR {chain[0]} = {value}\n")]
        for previous, name in zip(chain, chain[1:]):
            statements.append(self._encode(f"\nVAR {name} = VAR {previous}\n"))
        return statements


def _interleave(first: list, second: list, rng: random.Random) -> list:
    """Merge two lists at random, keeping each list's own order (assignments precede their use)."""
    merged, i, j = [], 0, 0
    while i < len(first) or j < len(second):
        take_first = j == len(second) or (i < len(first) and rng.random() < 0.5)
        if take_first:
            merged.append(first[i])
            i += 1
        else:
            merged.append(second[j])
            j += 1
    return merged
