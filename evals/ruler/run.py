"""Run RULER tasks on a model: make samples, decode greedily, score like RULER."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from evals.generate import greedy_generate, prompt_tokens, training_length
from evals.ruler import build_task
from evals.ruler.scoring import postprocess_prediction, score_sample

log = logging.getLogger(__name__)


def run_ruler_task(model, tokenizer, task_name: str, length: int, *, num_samples: int, seed: int = 42,
                   batch_size: int = 4, haystack_dir=None, qa_files: dict | None = None,
                   tokens_to_generate: int | None = None, predictions_path: str | Path | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Score one RULER task at one length; returns the fields of a result row."""
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    started = time.time()
    task = build_task(task_name, tokenizer, haystack_dir=haystack_dir, qa_files=qa_files,
                      tokens_to_generate=tokens_to_generate)
    samples = task.samples(length, num_samples, seed)
    outputs = greedy_generate(model, [prompt_tokens(tokenizer, s.prompt) for s in samples], task.tokens_to_generate,
                              eot_id=getattr(tokenizer, "eot_id", None), batch_size=batch_size,
                              progress=progress, description=f"{task_name}@{length}")
    predictions = [postprocess_prediction(tokenizer.decode(tokens)) for tokens in outputs]
    scores = [score_sample(p, s.answers, s.metric) for p, s in zip(predictions, samples)]
    if predictions_path is not None:
        _write_predictions(predictions_path, samples, predictions, scores)
    train_length = training_length(model)
    return {
        "task": "ruler",
        "subtask": task_name,
        "length": length,
        "score": 100.0 * sum(scores) / len(scores),
        "metric": f"string_match_{task.metric}",
        "num_samples": len(samples),
        "nulls": sum(1 for p in predictions if not p),
        "mean_prompt_tokens": sum(s.num_prompt_tokens for s in samples) / len(samples),
        "beyond_training": None if train_length is None else length > train_length,
        "haystack_source": samples[0].meta.get("haystack_source"),
        "seconds": round(time.time() - started, 3),
        "error": None,
    }


def _write_predictions(path, samples, predictions, scores) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for sample, prediction, score in zip(samples, predictions, scores):
            record = {"task": sample.task, "index": sample.index, "length": sample.length,
                      "num_prompt_tokens": sample.num_prompt_tokens, "answers": sample.answers,
                      "prediction": prediction, "score": score, "prompt_tail": sample.prompt[-300:]}
            handle.write(json.dumps(record) + "\n")
