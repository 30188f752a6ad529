"""RULER's QA tasks over user-supplied files: qa_1 (SQuAD v2 JSON), qa_2 (HotpotQA JSON).

The documents that answer the question are mixed with distractor documents (first the other
paragraphs of the same article for SQuAD, then random ones) until the prompt fills its budget;
scoring is ``string_match_part``. Size is counted in whole documents.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from evals.ruler import constants
from evals.ruler.base import RulerTask

QA_DATASETS = ("squad", "hotpotqa")


@dataclass
class QaItem:
    question: str
    answers: list[str]
    gold_docs: list[int]
    related_docs: list[int]  # preferred distractors (same SQuAD article)


def read_squad(path: str | Path) -> tuple[list[QaItem], list[str]]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))["data"]
    docs = sorted({paragraph["context"] for article in data for paragraph in article["paragraphs"]})
    doc_index = {doc: i for i, doc in enumerate(docs)}
    items = []
    for article in data:
        article_docs = [doc_index[p["context"]] for p in article["paragraphs"]]
        for paragraph in article["paragraphs"]:
            gold = doc_index[paragraph["context"]]
            for qa in paragraph["qas"]:
                if qa.get("is_impossible", False) or not qa["answers"]:
                    continue
                items.append(QaItem(qa["question"], [a["text"] for a in qa["answers"]], [gold],
                                    [d for d in article_docs if d != gold]))
    return items, docs


def read_hotpotqa(path: str | Path) -> tuple[list[QaItem], list[str]]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))

    def as_doc(title: str, sentences: list[str]) -> str:
        return f"{title}\n{''.join(sentences)}"

    docs = sorted({as_doc(title, sentences) for item in data for title, sentences in item["context"]})
    doc_index = {doc: i for i, doc in enumerate(docs)}
    items = [QaItem(item["question"], [item["answer"]],
                    [doc_index[as_doc(title, sentences)] for title, sentences in item["context"]], [])
             for item in data]
    return items, docs


@dataclass
class QaDraw:
    item: QaItem
    doc_order: list[int]  # gold first, then related, then the rest in random order
    shuffle_seed: int


class QaTask(RulerTask):
    family = "qa"

    def __init__(self, name: str, tokenizer, *, dataset: str, path: str | Path,
                 tokens_to_generate: int | None = None):
        super().__init__(name, tokenizer, tokens_to_generate)
        if dataset not in QA_DATASETS:
            raise ValueError(f"dataset={dataset!r}; choose one of {list(QA_DATASETS)}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"{name}: the {dataset} file {str(path)!r} does not exist")
        reader = read_squad if dataset == "squad" else read_hotpotqa
        self.items, self.docs = reader(path)
        if not self.items:
            raise ValueError(f"{name}: no answerable questions in {path}")

    def draw(self, rng: random.Random, length: int, index: int) -> QaDraw:
        # RULER walks the questions in file order; the sample index picks the question
        item = self.items[index % len(self.items)]
        first = item.gold_docs + rng.sample(item.related_docs, len(item.related_docs))
        rest = [i for i in range(len(self.docs)) if i not in set(first)]
        rng.shuffle(rest)
        return QaDraw(item, first + rest, rng.getrandbits(64))

    def render(self, draw: QaDraw, size: int) -> tuple[str, dict]:
        count = max(size, len(draw.item.gold_docs))
        # RULER repeats the documents when the haystack needs more than the file has
        chosen = [draw.doc_order[i % len(draw.doc_order)] for i in range(count)]
        random.Random(draw.shuffle_seed).shuffle(chosen)
        context = "\n\n".join(constants.QA_DOCUMENT.format(i=i + 1, document=self.docs[d]) for i, d in enumerate(chosen))
        prompt = constants.QA_TEMPLATE.format(context=context, query=draw.item.question) + constants.QA_ANSWER_PREFIX
        return prompt, {"answers": draw.item.answers, "num_documents": count}
