"""In-distribution long-context eval: the training mixture's own synthetic tasks, teacher-forced.

``task=synthetic`` builds documents with ``adasplash_train.data.synthetic.SyntheticTasks``
(kv_retrieval, copy, variable_tracking): exactly ``length`` tokens each, ``[eot]``, filler with the
task's statements, a question, and the answer as the final tokens. A model trained with
``data.synthetic_fraction > 0`` has learned these formats, so scores at 1x, 2x, 4x the training
length measure how far that learned retrieval skill extrapolates, which RULER cannot show on a
model too small to follow RULER's templates.

Scoring needs no generation: one causal forward over the whole sample, and the argmax of the
model's next-token distribution at each answer position (teacher forcing: the prediction of answer
token i sees the true answer tokens before it). Per (task, length): ``exact_match`` (% of samples
whose every answer token is the argmax) and ``token_accuracy`` (% of answer tokens that are).
Only the answer positions go through the output head, in chunks, so a 16k-token sample never
holds a (T, vocab) logits tensor.

Filler text is text the model did not train on: the held-out validation split of the training
run's own token cache (located through the checkpoint's data-module state), or, when that cache
is not on this machine, the essay haystack of the RULER tasks (see ``load_filler``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from adasplash_train.data.synthetic import TASKS, SyntheticSample, SyntheticTasks
from evals.generate import model_device, training_length

log = logging.getLogger(__name__)

METRICS = ("exact_match", "token_accuracy")
FILLER_MODES = ("auto", "val", "haystack")
# answer positions per output-head matmul: bounds the logits held at once to LOGITS_CHUNK x vocab
LOGITS_CHUNK = 1024
# the key under which Lightning stores TokenDataModule.state_dict() in a checkpoint
DATAMODULE_STATE_KEY = "TokenDataModule"


# ---------------------------------------------------------------------------- filler


@dataclass
class Filler:
    tokens: Any  # a token array or a TokenSplit (anything SyntheticTasks takes as filler)
    source: str  # for result rows: "val:<token cache folder>" or "haystack:<where the essays came from>"


def checkpoint_data_state(ckpt: str | Path) -> tuple[dict[str, Any] | None, Path | None]:
    """The data module's state saved in a training checkpoint (``shard_dir``, ``seq_len``, ...) and
    the training run folder, if the path shows one. Resolves ``ckpt`` as ``load_model`` does."""
    from adasplash_train.checkpoint import SHARDED_METADATA_FILE, is_sharded_checkpoint, latest_checkpoint

    path = Path(ckpt)
    run_dir = None
    if path.is_dir() and not is_sharded_checkpoint(path):
        run_dir = path
        path = latest_checkpoint(path) or path / "checkpoints" / "last.ckpt"
    if path.parent.name == "checkpoints":
        run_dir = run_dir or path.parent.parent
    file = path / SHARDED_METADATA_FILE if is_sharded_checkpoint(path) else path
    if not file.is_file():
        return None, run_dir
    try:
        checkpoint = torch.load(file, map_location="cpu", mmap=True, weights_only=False)
    except RuntimeError:  # an old (non-zip) serialization cannot be memory-mapped
        checkpoint = torch.load(file, map_location="cpu", weights_only=False)
    state = checkpoint.get(DATAMODULE_STATE_KEY)
    return (dict(state) if isinstance(state, dict) else None), run_dir


def _cache_dirs(cache_dir: str | Path | None, run_dir: Path | None) -> list[Path]:
    """Where the training run's token cache may be: the given folder, the run's own
    ``data.cache_dir`` (its saved Hydra config), ``$ADASPLASH_CACHE``, the default cache."""
    candidates: list[str | Path] = []
    if cache_dir:
        candidates.append(cache_dir)
    hydra_config = run_dir / ".hydra" / "config.yaml" if run_dir is not None else None
    if hydra_config is not None and hydra_config.is_file():
        try:
            from omegaconf import OmegaConf

            saved = OmegaConf.select(OmegaConf.load(hydra_config), "data.cache_dir")
            if saved:
                candidates.append(saved)
        except Exception as error:  # an unresolvable interpolation: the other places remain
            log.debug("could not read data.cache_dir from %s: %s", hydra_config, error)
    if os.environ.get("ADASPLASH_CACHE"):
        candidates.append(os.environ["ADASPLASH_CACHE"])
    candidates.append(Path.home() / ".cache" / "adasplash_train")
    return list(dict.fromkeys(Path(os.path.expanduser(str(c))) for c in candidates))


def validation_filler(shard_dir: str | Path, tokenizer) -> Filler:
    """The validation split of a token cache folder, checked against the model's tokenizer."""
    from adasplash_train.data.shards import TokenShards

    shards = TokenShards(Path(shard_dir))
    cached = (shards.meta.get("tokenizer") or {}).get("name")
    if cached != getattr(tokenizer, "name", None) or shards.eot_id != tokenizer.eot_id:
        raise ValueError(f"the token cache {shard_dir} was built with tokenizer {cached!r} (eot {shards.eot_id}), "
                         f"but the model uses {getattr(tokenizer, 'name', '?')!r} (eot {tokenizer.eot_id})")
    if shards.val.num_tokens < 2:
        raise ValueError(f"the validation split of {shard_dir} is empty")
    return Filler(shards.val, f"val:{Path(shard_dir).name}")


def find_validation_shards(ckpt: str | Path | None, cache_dir: str | Path | None = None) -> tuple[Path | None, str]:
    """The training run's token cache folder, or None and the reason it was not found."""
    if ckpt in (None, "", "???", "in-memory"):
        return None, "no checkpoint path (an in-memory model)"
    state, run_dir = checkpoint_data_state(ckpt)
    name = (state or {}).get("shard_dir")
    if not name:
        return None, f"no data module state (shard_dir) found in the checkpoint at {ckpt}"
    places = _cache_dirs(cache_dir, run_dir)
    for place in places:
        folder = place / "tokens" / name
        if (folder / "meta.json").is_file():
            return folder, ""
    return None, (f"the run's token cache tokens/{name} is in none of {[str(p) for p in places]} "
                  "(set synthetic.cache_dir or synthetic.shard_dir)")


@functools.lru_cache(maxsize=4)
def _haystack_tokens(tokenizer, haystack_dir: str | None) -> Filler:
    from evals.ruler.haystack import load_essay_haystack

    haystack = load_essay_haystack(haystack_dir)
    return Filler(np.asarray(tokenizer.encode(haystack.text), dtype=np.int64), f"haystack:{haystack.source}")


def load_filler(tokenizer, *, mode: str = "auto", ckpt: str | Path | None = None, shard_dir: str | Path | None = None,
                cache_dir: str | Path | None = None, haystack_dir: str | Path | None = None) -> Filler:
    """Filler text the model did not train on.

    ``val``: the validation split of ``shard_dir``, or of the token cache the checkpoint was trained
    from (its data-module state names the folder; looked up in ``cache_dir``, the run's saved
    ``data.cache_dir``, ``$ADASPLASH_CACHE``, ``~/.cache/adasplash_train``); an error if not found.
    ``haystack``: the RULER essay haystack (``evals/ruler/haystack.py``; its last resort is the
    stdlib's pydoc topics, which the stdlib training corpus contains). ``auto``: ``val`` when
    found, else ``haystack`` with a warning.
    """
    if mode not in FILLER_MODES:
        raise ValueError(f"synthetic.filler={mode!r}; choose one of {list(FILLER_MODES)}")
    if mode in ("auto", "val"):
        if shard_dir:
            return validation_filler(shard_dir, tokenizer)
        folder, reason = find_validation_shards(ckpt, cache_dir)
        if folder is not None:
            try:
                return validation_filler(folder, tokenizer)
            except ValueError as error:
                reason = str(error)
        if mode == "val":
            raise FileNotFoundError(f"synthetic.filler=val: {reason}")
        log.warning("synthetic filler: %s; using the essay haystack instead", reason)
    filler = _haystack_tokens(tokenizer, str(haystack_dir) if haystack_dir else None)
    if filler.source.endswith("pydoc_data.topics"):
        log.warning("synthetic filler is the stdlib's pydoc topics, which the stdlib training corpus contains")
    return filler


# ---------------------------------------------------------------------------- samples


def sample_rng(seed: int, task: str, length: int, index: int) -> random.Random:
    """A sample is a function of (seed, task, length, index) and the filler corpus."""
    return random.Random(f"{seed}/synthetic_{task}/{length}/{index}")


def build_samples(tokenizer, filler_tokens, task: str, length: int, num_samples: int, seed: int) -> list[SyntheticSample]:
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; choose from {list(TASKS)}")
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    generator = SyntheticTasks(tokenizer, filler_tokens, (task,))
    return [getattr(generator, task)(length, sample_rng(seed, task, length, index)) for index in range(num_samples)]


# ---------------------------------------------------------------------------- scoring


@torch.no_grad()
def answer_predictions(model, tokens: torch.Tensor, answer_lengths: Sequence[int],
                       chunk: int = LOGITS_CHUNK) -> list[torch.Tensor]:
    """Row b's argmax next-token predictions for its last ``answer_lengths[b]`` tokens (from the
    positions just before them), from one causal forward over ``tokens`` (B, T).

    On the repository's GPT the forward stops at the hidden states and only the needed positions go
    through ``model.logits`` (final norm and head), ``chunk`` at a time; any other model is called
    as ``model(tokens)`` and its logits are sliced.
    """
    B, T = tokens.shape
    if len(answer_lengths) != B or any(not 1 <= n < T for n in answer_lengths):
        raise ValueError(f"answer lengths {list(answer_lengths)} must be in [1, {T}) for each of {B} rows")
    if not hasattr(model, "hidden_states"):
        logits, _ = model(tokens)
        return [logits[b, T - 1 - n:T - 1].argmax(-1).cpu() for b, n in enumerate(answer_lengths)]
    hidden = model.hidden_states(tokens)
    predictions = []
    for b, n in enumerate(answer_lengths):
        pieces = [model.logits(hidden[b, start:min(start + chunk, T - 1)]).argmax(-1).cpu()
                  for start in range(T - 1 - n, T - 1, chunk)]
        predictions.append(torch.cat(pieces))
    return predictions


def score_samples(model, samples: Sequence[SyntheticSample], *, batch_size: int = 4,
                  progress: bool = False, description: str = "synthetic") -> list[dict[str, Any]]:
    """Per sample: the predicted answer tokens, how many are right, and whether all are."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    device = model_device(model)
    results: list[dict[str, Any]] = [{} for _ in samples]
    by_length: dict[int, list[int]] = {}
    for index, sample in enumerate(samples):
        by_length.setdefault(len(sample.tokens), []).append(index)
    from tqdm.auto import tqdm

    with tqdm(total=len(samples), desc=description, disable=not progress, dynamic_ncols=True) as bar:
        for indices in by_length.values():
            for start in range(0, len(indices), batch_size):
                batch = indices[start:start + batch_size]
                tokens = torch.as_tensor(np.stack([samples[i].tokens for i in batch]), dtype=torch.long, device=device)
                answers = [list(samples[i].answer_ids) for i in batch]
                predicted = answer_predictions(model, tokens, [len(a) for a in answers])
                for i, answer, guess in zip(batch, answers, predicted):
                    right = int((guess == torch.tensor(answer)).sum())
                    results[i] = {"predicted_ids": guess.tolist(), "correct_tokens": right,
                                  "answer_tokens": len(answer), "exact": right == len(answer)}
                bar.update(len(batch))
    return results


def metrics(scored: Sequence[dict[str, Any]]) -> dict[str, float]:
    """exact_match: % of samples with every answer token right; token_accuracy: % of answer tokens right."""
    if not scored:
        raise ValueError("no samples to score")
    return {"exact_match": 100.0 * sum(s["exact"] for s in scored) / len(scored),
            "token_accuracy": 100.0 * sum(s["correct_tokens"] for s in scored) / sum(s["answer_tokens"] for s in scored)}


def run_synthetic_task(model, tokenizer, task: str, length: int, *, filler: Filler, num_samples: int = 20,
                       seed: int = 42, batch_size: int = 4, predictions_path: str | Path | None = None,
                       progress: bool = True) -> list[dict[str, Any]]:
    """One synthetic task at one length: one result row per metric."""
    started = time.time()
    samples = build_samples(tokenizer, filler.tokens, task, length, num_samples, seed)
    scored = score_samples(model, samples, batch_size=batch_size, progress=progress, description=f"{task}@{length}")
    if predictions_path is not None:
        _write_predictions(predictions_path, tokenizer, samples, scored, length)
    train_length = training_length(model)
    seconds = round(time.time() - started, 3)
    common = {
        "task": "synthetic", "subtask": task, "length": length, "num_samples": len(samples),
        "mean_answer_tokens": sum(s["answer_tokens"] for s in scored) / len(scored),
        "beyond_training": None if train_length is None else length > train_length,
        "filler": filler.source, "seconds": seconds, "error": None,
    }
    return [{**common, "metric": name, "score": value} for name, value in metrics(scored).items()]


def _write_predictions(path, tokenizer, samples, scored, length: int) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for index, (sample, result) in enumerate(zip(samples, scored)):
            answer_start = len(sample.tokens) - len(sample.answer_ids)
            record = {"task": sample.task, "index": index, "length": length, "answers": [sample.answer],
                      "prediction": _decode(tokenizer, result["predicted_ids"]), "exact": result["exact"],
                      "correct_tokens": result["correct_tokens"], "answer_tokens": result["answer_tokens"],
                      "question_tail": _decode(tokenizer, sample.tokens[max(0, answer_start - 40):answer_start])}
            handle.write(json.dumps(record) + "\n")


def _decode(tokenizer, ids) -> str:
    """Text of token ids; ids of the model's padded vocabulary rows (no text) are dropped."""
    vocab_size = getattr(tokenizer, "vocab_size", None)
    return tokenizer.decode([int(i) for i in ids if vocab_size is None or int(i) < vocab_size])
