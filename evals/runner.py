"""What ``python -m evals`` does with its config: load a checkpoint, run one evaluation over the
requested lengths, append one result row per unit of work to the sweep's results file.

A unit (one RULER or synthetic task at one length, one needle length, one lm-eval run) that raises
leaves an error row and the loop goes on, so one length running out of memory does not lose the others.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from evals import results
from evals.generate import cast_for_inference, training_length

log = logging.getLogger(__name__)

EVAL_TASKS = ("ruler", "niah", "lm_eval", "synthetic")


def evaluate(cfg: DictConfig, *, model=None, tokenizer=None, output_dir: str | Path | None = None,
             results_file: str | Path | None = None) -> list[dict[str, Any]]:
    """Run ``cfg.task`` on ``cfg.ckpt`` (or on the given model and tokenizer) and return the rows.

    Rows are appended to ``results_file`` (default ``cfg.results_file``) as they are produced.
    """
    task = cfg.task
    if task not in EVAL_TASKS:
        raise ValueError(f"task={task!r}; choose one of {list(EVAL_TASKS)}")
    lengths = _lengths(cfg)
    if model is None:
        if cfg.get("ckpt") in (None, "???"):
            raise ValueError("ckpt is required: python -m evals ckpt=runs/<run>/checkpoints/last.ckpt (or a run dir)")
        from adasplash_train.checkpoint import load_model

        model, tokenizer = load_model(cfg.ckpt, device=cfg.get("device"))
        model = cast_for_inference(model, cfg.get("dtype", "auto"))
    elif tokenizer is None:
        raise ValueError("a model was given without its tokenizer")
    output_dir = Path(output_dir or cfg.get("output_dir") or ".")
    results_file = results_file or cfg.get("results_file")
    base = results.model_fields(model, tokenizer, cfg.get("ckpt") or "in-memory", cfg.get("name"))
    base["seed"] = int(cfg.seed)
    _warn_beyond_training(lengths, training_length(model))

    rows: list[dict[str, Any]] = []

    def record(new_rows: list[dict[str, Any]]) -> None:
        new_rows = [{**base, **row} for row in new_rows]
        rows.extend(new_rows)
        if results_file:
            results.append_rows(results_file, new_rows)

    units = {"ruler": _ruler_units, "niah": _niah_units, "lm_eval": _lm_eval_units,
             "synthetic": _synthetic_units}[task](
        cfg, model, tokenizer, lengths, output_dir, base["run"])
    for fields, run_unit in units:
        try:
            record(run_unit())
        except Exception as error:  # one failing unit must not take the sweep's other results with it
            log.error("%s %s failed (%s: %s); recording the error and continuing", task, fields,
                      type(error).__name__, error, exc_info=log.isEnabledFor(logging.DEBUG))
            record([results.error_row({}, error, task=task, **fields)])
    if task == "niah":
        _save_needle_outputs(rows, output_dir, base["run"], training_length(model))
    return rows


Unit = tuple[dict[str, Any], Callable[[], list[dict[str, Any]]]]


def _ruler_units(cfg, model, tokenizer, lengths, output_dir: Path, label: str) -> list[Unit]:
    from evals.ruler import TASKS, qa_skip_reason
    from evals.ruler.run import run_ruler_task

    settings = cfg.ruler
    qa_files = OmegaConf.to_container(settings.qa_files, resolve=True) if settings.get("qa_files") else None
    task_names = list(settings.tasks)
    unknown = [name for name in task_names if name not in TASKS]
    if unknown:
        raise ValueError(f"ruler.tasks has unknown tasks {unknown}; choose from {list(TASKS)}")
    units: list[Unit] = []
    for name in task_names:
        reason = qa_skip_reason(name, qa_files)
        if reason:
            log.warning(reason)
            continue
        for length in lengths:
            predictions = (output_dir / "predictions" / f"{label}_{name}_{length}.jsonl"
                           if cfg.get("save_predictions", True) else None)

            def run(name=name, length=length, predictions=predictions):
                return [run_ruler_task(model, tokenizer, name, length, num_samples=int(settings.num_samples),
                                       seed=int(cfg.seed), batch_size=int(cfg.batch_size),
                                       haystack_dir=settings.get("haystack_dir"), qa_files=qa_files,
                                       tokens_to_generate=settings.get("tokens_to_generate"),
                                       predictions_path=predictions, progress=bool(cfg.get("progress", True)))]

            units.append(({"subtask": name, "length": length}, run))
    return units


def _niah_units(cfg, model, tokenizer, lengths, output_dir: Path, label: str) -> list[Unit]:
    from evals.niah import run_needle_length

    settings = cfg.niah
    units: list[Unit] = []
    for length in lengths:
        def run(length=length):
            return run_needle_length(
                model, tokenizer, length, depths=list(settings.depths), samples_per_cell=int(settings.samples_per_cell),
                seed=int(cfg.seed), batch_size=int(cfg.batch_size), haystack=settings.haystack,
                needle_key=settings.needle_key, needle_value=settings.needle_value,
                tokens_to_generate=int(settings.tokens_to_generate), haystack_dir=settings.get("haystack_dir"),
                progress=bool(cfg.get("progress", True)))

        units.append(({"subtask": f"{settings.haystack}_{settings.needle_key}_{settings.needle_value}",
                       "length": length}, run))
    return units


def _synthetic_units(cfg, model, tokenizer, lengths, output_dir: Path, label: str) -> list[Unit]:
    from adasplash_train.data.synthetic import TASKS
    from evals.synthetic import load_filler, run_synthetic_task

    settings = cfg.synthetic
    task_names = list(settings.tasks)
    unknown = [name for name in task_names if name not in TASKS]
    if unknown or not task_names:
        raise ValueError(f"synthetic.tasks has unknown tasks {unknown or task_names}; choose from {list(TASKS)}")
    ckpt = cfg.get("ckpt")
    # found once for every unit; a filler that cannot be had (filler=val without the cache) stops the job here
    filler = load_filler(tokenizer, mode=settings.get("filler", "auto"), ckpt=None if ckpt == "???" else ckpt,
                         shard_dir=settings.get("shard_dir"), cache_dir=settings.get("cache_dir"),
                         haystack_dir=settings.get("haystack_dir"))
    log.info("synthetic filler: %s", filler.source)
    units: list[Unit] = []
    for name in task_names:
        for length in lengths:
            predictions = (output_dir / "predictions" / f"{label}_synthetic_{name}_{length}.jsonl"
                           if cfg.get("save_predictions", True) else None)

            def run(name=name, length=length, predictions=predictions):
                return run_synthetic_task(model, tokenizer, name, length, filler=filler,
                                          num_samples=int(settings.num_samples), seed=int(cfg.seed),
                                          batch_size=int(cfg.batch_size), predictions_path=predictions,
                                          progress=bool(cfg.get("progress", True)))

            units.append(({"subtask": name, "length": length}, run))
    return units


def _lm_eval_units(cfg, model, tokenizer, lengths, output_dir: Path, label: str) -> list[Unit]:
    def run():
        from evals.lm_eval_adapter import run_lm_eval

        settings = cfg.lm_eval
        return run_lm_eval(model, tokenizer, tasks=list(settings.tasks), include_path=settings.get("include_path"),
                           num_fewshot=settings.get("num_fewshot"), limit=settings.get("limit"),
                           max_length=settings.get("max_length"), batch_size=int(cfg.batch_size),
                           seed=int(cfg.seed))

    return [({"subtask": ",".join(cfg.lm_eval.tasks), "length": None}, run)]


def _save_needle_outputs(rows, output_dir: Path, label: str, train_length: int | None) -> None:
    from evals.niah import save_grid

    cells = [row for row in rows if row.get("task") == "niah" and row.get("score") is not None]
    if cells:
        paths = save_grid(cells, output_dir / "niah", label, train_length)
        log.info("needle grid written: %s", ", ".join(str(p) for p in paths.values()))


def _lengths(cfg) -> list[int]:
    raw = cfg.get("lengths")
    if raw is None:
        raise ValueError("lengths is required, e.g. lengths=[4096,8192]")
    values = list(raw) if not isinstance(raw, (int, str)) else [raw]
    try:
        lengths = [int(value) for value in values]
    except (TypeError, ValueError) as error:
        raise ValueError(f"lengths={values} must be integers, e.g. lengths=[4096,8192]") from error
    if not lengths or any(length < 1 for length in lengths):
        raise ValueError(f"lengths={values} must be a non-empty list of positive token counts")
    return lengths


def _warn_beyond_training(lengths: list[int], train_length: int | None) -> None:
    if train_length is None:
        return
    beyond = [length for length in lengths if length > train_length]
    if beyond:
        log.info("lengths %s exceed the training context (%d tokens): extrapolation, marked in the results",
                 beyond, train_length)
