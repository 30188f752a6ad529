"""Result rows: one JSON object per line, appended to one file per sweep.

Every row names the model (``run``: a label; ``ckpt``; ``attention``; ``train_length``) and what
was measured (``task``: ruler | niah | lm_eval | synthetic; ``subtask``; ``length``; ``score``). A failed unit
of work leaves a row with ``error`` set instead of a score, so a sweep never silently loses it.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any, Iterable


def run_label(ckpt: str | Path, name: str | None = None) -> str:
    """A short label for a checkpoint: ``name`` if given, else its training run's directory name."""
    if name:
        return str(name)
    path = Path(ckpt)
    if path.suffix == ".ckpt":
        return path.parent.parent.name if path.parent.name == "checkpoints" else path.stem
    return path.name


def model_fields(model, tokenizer, ckpt: str | Path, name: str | None = None) -> dict[str, Any]:
    config = getattr(model, "config", None)
    attention = getattr(config, "attention", None) or {}
    return {
        "run": run_label(ckpt, name),
        "ckpt": str(ckpt),
        "attention": attention.get("name", "unknown") if isinstance(attention, dict) else str(attention),
        "train_length": getattr(config, "max_seq_len", None),
        "tokenizer": getattr(tokenizer, "name", type(tokenizer).__name__),
    }


def beyond_training(length: int | None, train_length: int | None) -> bool | None:
    if length is None or train_length is None:
        return None
    return int(length) > int(train_length)


def error_row(base: dict[str, Any], error: BaseException, **fields) -> dict[str, Any]:
    last_lines = "".join(traceback.format_exception(type(error), error, error.__traceback__)[-3:])
    return {**base, **fields, "score": None, "error": f"{type(error).__name__}: {error}", "traceback": last_lines,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def append_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows to a JSONL file (one write per row, so concurrent sweep jobs do not interleave)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, default=str) + "\n")
            handle.flush()


def read_rows(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Rows of every given JSONL file; a folder means every results.jsonl below it."""
    rows = []
    for path in paths:
        path = Path(path)
        files = sorted(path.rglob("results.jsonl")) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            raise FileNotFoundError(f"no results file at {path} (pass a results.jsonl or a folder holding some)")
        for file in files:
            for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{file}:{number} is not a JSON line: {error}") from error
    return rows
