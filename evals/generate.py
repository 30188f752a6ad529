"""Batched greedy decoding with the model's KV cache.

Rows of one forward share a length (the model takes no padding mask), so prompts are grouped by
token length and each group is decoded in batches: a causal prefill of the whole prompt, then one
token per step against the cache. A row stops at the end-of-text token, at a stop string, or after
``max_new_tokens``; finished rows keep being fed (their outputs are cut) until the batch is done.
Prompts longer than the model's training context are allowed: that is what extrapolation tests.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Sequence

import torch

log = logging.getLogger(__name__)


def model_device(model) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cast_for_inference(model, dtype: str | None = "auto"):
    """Cast the model's weights for evaluation. "auto": bfloat16 on CUDA (half the memory, and
    the flash/cuDNN softmax kernels need 16-bit inputs), float32 elsewhere; None keeps them."""
    if dtype is None:
        return model
    if dtype == "auto":
        target = torch.bfloat16 if model_device(model).type == "cuda" else torch.float32
    elif dtype in DTYPES:
        target = DTYPES[dtype]
    else:
        raise ValueError(f"dtype={dtype!r}; choose auto, null or one of {list(DTYPES)}")
    return model.to(target)


def training_length(model) -> int | None:
    """The context length the model was trained at (``model.config.max_seq_len``), if it says."""
    config = getattr(model, "config", None)
    return getattr(config, "max_seq_len", None)


def length_groups(prompts: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices of prompts, grouped by equal length, each group cut into batches of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {index} is empty; greedy decoding needs at least one token")
        by_length[len(prompt)].append(index)
    return [indices[start:start + batch_size]
            for _, indices in sorted(by_length.items())
            for start in range(0, len(indices), batch_size)]


def prompt_tokens(tokenizer, text: str) -> list[int]:
    """A prompt as the model saw documents in training: every training document starts with the
    end-of-text token (it serves as the beginning-of-document marker), so prompts do too."""
    eot_id = getattr(tokenizer, "eot_id", None)
    return ([eot_id] if eot_id is not None else []) + list(tokenizer.encode(text))


@torch.no_grad()
def greedy_generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, eot_id: int | None,
                    batch_size: int = 8, tokenizer=None, stop_strings: Sequence[str] = (),
                    use_cache: bool = True, progress: bool = True, description: str = "generate") -> list[list[int]]:
    """Greedy continuations (token ids, without the stopping token) of every prompt, in input order.

    ``stop_strings`` (needs ``tokenizer``): a row also stops once its decoded output contains one;
    the output is not cut at it here (``truncate_at_stop`` does that on text).
    ``use_cache=False`` recomputes the full sequence every step (slow; a reference for tests and
    for models without ``new_kv_cache``).
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need the tokenizer to decode outputs; pass tokenizer=...")
    if use_cache and not hasattr(model, "new_kv_cache"):
        log.warning("model has no new_kv_cache(); decoding without a cache (every step recomputes the prompt)")
        use_cache = False
    outputs: list[list[int]] = [[] for _ in prompts]
    batches = length_groups(prompts, batch_size)
    with _progress_bar(sum(len(b) for b in batches), progress, description) as bar:
        for batch in batches:
            rows = torch.tensor([list(prompts[i]) for i in batch], dtype=torch.long, device=model_device(model))
            generated = _decode_batch(model, rows, max_new_tokens, eot_id, tokenizer, list(stop_strings), use_cache)
            for index, tokens in zip(batch, generated):
                outputs[index] = tokens
            bar.update(len(batch))
    return outputs


def _decode_batch(model, rows: torch.Tensor, max_new_tokens: int, eot_id, tokenizer, stop_strings, use_cache):
    batch_size = rows.shape[0]
    outputs: list[list[int]] = [[] for _ in range(batch_size)]
    finished = [False] * batch_size
    if max_new_tokens == 0:
        return outputs
    cache = model.new_kv_cache(batch_size) if use_cache else None
    # only the last position's logits: a long prefill never holds a (T, vocab) tensor
    logits, _ = model(rows, cache=cache, last_only=True) if use_cache else model(rows, last_only=True)
    sequence = rows
    for step in range(max_new_tokens):
        next_tokens = logits[:, -1, :].argmax(dim=-1)
        for row, token in enumerate(next_tokens.tolist()):
            if finished[row]:
                continue
            if eot_id is not None and token == eot_id:
                finished[row] = True
                continue
            outputs[row].append(token)
            if stop_strings and any(stop in tokenizer.decode(outputs[row]) for stop in stop_strings):
                finished[row] = True
        if all(finished) or step == max_new_tokens - 1:
            break
        step_input = next_tokens[:, None]
        if use_cache:
            logits, _ = model(step_input, cache=cache, last_only=True)
        else:
            sequence = torch.cat([sequence, step_input], dim=1)
            logits, _ = model(sequence, last_only=True)
    return outputs


def truncate_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest stop string."""
    cut = min((text.find(stop) for stop in stop_strings if stop and stop in text), default=len(text))
    return text[:cut]


class _progress_bar:
    """tqdm when available and wanted, else a no-op with the same two methods."""

    def __init__(self, total: int, enabled: bool, description: str):
        self._bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, desc=description, unit="prompt", leave=False)
            except ImportError:  # pragma: no cover - tqdm ships with the project's dependencies
                self._bar = None

    def update(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self._bar is not None:
            self._bar.close()
