"""Datasets for the offline lm-eval tasks in this folder, read from the JSONL files next to it.

Task YAMLs reference these through ``custom_dataset: !function local_data.<name>``; lm-eval calls
them with the task's metadata as keyword arguments, which they ignore.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _jsonl(file_name: str) -> list[dict]:
    lines = (HERE / file_name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _as_test_split(rows: list[dict]):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def multiple_choice(**_metadata):
    return _as_test_split(_jsonl("multiple_choice.jsonl"))


def short_answer(**_metadata):
    return _as_test_split(_jsonl("short_answer.jsonl"))


def paragraphs(**_metadata):
    return _as_test_split(_jsonl("paragraphs.jsonl"))
