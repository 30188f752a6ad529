"""Needle-in-a-haystack grid: context lengths x needle depths, exact-match scoring, heatmap.

Each cell holds ``samples_per_cell`` prompts in RULER's niah_single format (one needle
"One of the special magic numbers for {key} is: {value}." in an essay haystack, by default),
with the needle placed at that depth of the haystack's tokens. A sample is right when the first
word the model generates is exactly the value (no judge model, no partial credit); the looser
RULER substring score is kept alongside.
"""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path
from typing import Any, Sequence

from evals.generate import greedy_generate, prompt_tokens, training_length
from evals.ruler.niah import NiahTask
from evals.ruler.scoring import postprocess_prediction, score_sample

DEFAULT_DEPTHS = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
_WORD = re.compile(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*")


def first_word(text: str) -> str:
    match = _WORD.search(text)
    return match.group(0) if match else ""


def exact_match(prediction: str, answer: str) -> bool:
    """True when the first word of the prediction is exactly the answer (case-insensitive)."""
    return first_word(prediction).lower() == answer.lower()


def run_needle_length(model, tokenizer, length: int, *, depths: Sequence[float] = DEFAULT_DEPTHS,
                      samples_per_cell: int = 2, seed: int = 42, batch_size: int = 4, haystack: str = "essay",
                      needle_key: str = "words", needle_value: str = "numbers", tokens_to_generate: int = 32,
                      haystack_dir=None, progress: bool = True) -> list[dict[str, Any]]:
    """Every depth at one length: one result row per cell."""
    if samples_per_cell < 1:
        raise ValueError(f"samples_per_cell={samples_per_cell} must be >= 1")
    if not depths or any(not 0 <= float(d) <= 100 for d in depths):
        raise ValueError(f"depths={list(depths)} must be a non-empty list of percents in [0, 100]")
    started = time.time()
    samples, cells = [], []
    for depth in depths:
        task = NiahTask("needle", tokenizer, type_haystack=haystack, type_needle_k=needle_key,
                        type_needle_v=needle_value, depths=[float(depth)], depth_mode="tokens",
                        haystack_dir=haystack_dir, tokens_to_generate=tokens_to_generate)
        for index in range(samples_per_cell):
            # the same keys and values at every depth of a length: cells differ only by position
            sample = task.sample(index, length, seed)
            samples.append(sample)
            cells.append(float(depth))
    outputs = greedy_generate(model, [prompt_tokens(tokenizer, s.prompt) for s in samples], tokens_to_generate,
                              eot_id=getattr(tokenizer, "eot_id", None), batch_size=batch_size,
                              progress=progress, description=f"needle@{length}")
    predictions = [postprocess_prediction(tokenizer.decode(tokens)) for tokens in outputs]
    train_length = training_length(model)
    rows = []
    for depth in dict.fromkeys(cells):
        members = [i for i, cell in enumerate(cells) if cell == depth]
        exact = [exact_match(predictions[i], samples[i].answers[0]) for i in members]
        contains = [score_sample(predictions[i], samples[i].answers, "all") for i in members]
        rows.append({
            "task": "niah", "subtask": f"{haystack}_{needle_key}_{needle_value}", "length": length, "depth": depth,
            "score": 100.0 * sum(exact) / len(exact), "metric": "exact_match_first_word",
            "contains": 100.0 * sum(contains) / len(contains), "num_samples": len(members),
            "beyond_training": None if train_length is None else length > train_length,
            "example_prediction": predictions[members[0]][:80], "example_answer": samples[members[0]].answers[0],
            "seconds": round((time.time() - started) / len(depths), 3), "error": None,
        })
    return rows


def save_grid(rows: list[dict[str, Any]], out_dir: str | Path, label: str, train_length: int | None = None) -> dict[str, Path]:
    """Write the grid's cells as CSV and JSON and draw the heatmap; returns the three paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = [row for row in rows if row.get("task") == "niah" and row.get("score") is not None]
    paths = {"csv": out_dir / f"{label}_needle.csv", "json": out_dir / f"{label}_needle.json",
             "png": out_dir / f"{label}_needle.png"}
    columns = ["length", "depth", "score", "contains", "num_samples", "beyond_training"]
    with open(paths["csv"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(cells)
    paths["json"].write_text(json.dumps(cells, indent=1, default=str), encoding="utf-8")
    plot_heatmap(cells, paths["png"], title=label, train_length=train_length)
    return paths


def grid_matrix(cells: list[dict[str, Any]]) -> tuple[list[int], list[float], list[list[float]]]:
    """(lengths, depths, scores[depth][length]) with NaN where a cell is missing."""
    lengths = sorted({int(c["length"]) for c in cells})
    depths = sorted({float(c["depth"]) for c in cells})
    lookup = {(int(c["length"]), float(c["depth"])): float(c["score"]) for c in cells}
    matrix = [[lookup.get((length, depth), float("nan")) for length in lengths] for depth in depths]
    return lengths, depths, matrix


def plot_heatmap(cells: list[dict[str, Any]], path: str | Path, *, title: str = "", train_length: int | None = None,
                 ax=None) -> None:
    """Length on x, depth on y (0% at the top), exact-match percent as colour; lengths past the
    training context get a dashed line before them. Draws into ``ax`` if given, else saves ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths, depths, matrix = grid_matrix(cells)
    own_figure = ax is None
    if own_figure:
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * max(len(lengths), 2), 0.5 + 0.35 * max(len(depths), 4)))
    image = ax.imshow(matrix, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(lengths)), [_short(length) for length in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title)
    if train_length is not None:
        beyond = [i for i, length in enumerate(lengths) if length > train_length]
        if beyond:
            ax.axvline(beyond[0] - 0.5, color="black", linestyle="--", linewidth=1.5)
    for y, row in enumerate(matrix):
        for x, value in enumerate(row):
            if value == value:  # not NaN
                ax.text(x, y, f"{value:.0f}", ha="center", va="center", fontsize=7)
    if own_figure:
        fig.colorbar(image, ax=ax, label="exact match (%)")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _short(length: int) -> str:
    return f"{length // 1024}k" if length % 1024 == 0 else str(length)
