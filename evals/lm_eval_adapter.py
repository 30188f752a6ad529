"""lm-evaluation-harness adapter: our checkpoints as the registered lm-eval model "adasplash".

    python -m evals.lm_eval_adapter run --model adasplash --model_args ckpt=runs/entmax_8k \\
        --tasks adasplash_local --include_path evals/lm_eval_tasks

or from Python, ``run_lm_eval(model, tokenizer, tasks=[...])``. Importing this module imports
lm_eval; nothing on the training path imports it.

Scoring is exact: a batch is right-padded, which a causal model never sees, and every sequence is
cut to the last ``max_length`` tokens (default: the model's training context).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from evals.generate import cast_for_inference, greedy_generate, model_device, training_length, truncate_at_stop

log = logging.getLogger(__name__)

LOCAL_TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"


@register_model("adasplash")
class AdasplashLM(TemplateLM):
    """An adasplash-train GPT behind lm-eval's three request types (greedy generation only)."""

    def __init__(self, ckpt: str | None = None, device: str | None = None, batch_size: int | str = 4,
                 max_length: int | str | None = None, max_gen_toks: int | str = 256, dtype: str | None = "auto",
                 model=None, tokenizer=None, **unused):
        super().__init__()
        unused = {key: value for key, value in unused.items() if value is not None}
        if unused:
            log.warning("adasplash model ignores arguments %s", sorted(unused))
        if model is None:
            if ckpt is None:
                raise ValueError("the adasplash lm-eval model needs ckpt=PATH (a .ckpt file or a run directory)")
            from adasplash_train.checkpoint import load_model

            model, tokenizer = load_model(ckpt, device=device)
            model = cast_for_inference(model, dtype)
        elif tokenizer is None:
            raise ValueError("model was given without its tokenizer")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size_per_forward = int(batch_size) if str(batch_size).isdigit() else 4
        self._max_length = int(max_length) if max_length else (training_length(model) or 2048)
        self.max_gen_toks = int(max_gen_toks)

    # ------------------------------------------------------------------ what lm-eval asks about
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eot_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self):
        return model_device(self.model)

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name", "adasplash")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    # ------------------------------------------------------------------ loglikelihood
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """Sum of log-probabilities of each continuation after its context, and whether greedy
        decoding would have produced exactly that continuation."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        # longest first, so each batch pads little
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        for start in range(0, len(order), self.batch_size_per_forward):
            batch = order[start:start + self.batch_size_per_forward]
            scored = self._score_batch([(requests[i][1], requests[i][2]) for i in batch])
            for i, answer in zip(batch, scored):
                results[i] = answer
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
        return results

    @torch.no_grad()
    def _score_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        rows, spans = [], []
        for context, continuation in pairs:
            if not continuation:
                raise ValueError("lm-eval asked for the loglikelihood of an empty continuation")
            whole = (list(context) + list(continuation))[-(self.max_length + 1):]
            inputs = whole[:-1]
            rows.append(inputs)
            spans.append((len(inputs) - len(continuation), len(inputs), continuation))
        width = max(len(row) for row in rows)
        padded = torch.tensor([row + [0] * (width - len(row)) for row in rows], dtype=torch.long, device=self.device)
        logits, _ = self.model(padded)
        answers = []
        for row, (begin, end, continuation) in enumerate(spans):
            log_probs = F.log_softmax(logits[row, begin:end].float(), dim=-1)
            target = torch.tensor(continuation, dtype=torch.long, device=log_probs.device)
            total = log_probs.gather(-1, target[:, None]).sum().item()
            greedy = bool((log_probs.argmax(dim=-1) == target).all().item())
            answers.append((total, greedy))
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, in windows of ``max_length`` tokens without overlap."""
        totals = []
        for request in requests:
            (text,) = request.args
            windows = [make_disjoint_window(window) for window in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            scored = self._loglikelihood_tokens([(None, context, continuation) for context, continuation in windows])
            total = sum(logprob for logprob, _ in scored)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            totals.append(total)
        return totals

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        answers = []
        for request in requests:
            context, gen_kwargs = request.args
            kwargs = dict(gen_kwargs or {})
            until = kwargs.pop("until", None) or [self.tok_decode([self.eot_token_id])]
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0) or 0) > 0:
                log.warning("the adasplash model decodes greedily; ignoring sampling arguments %s", kwargs)
            keep = max(self.max_length - max_new, 1)
            prompt = self.tok_encode(context)[-keep:]
            (tokens,) = greedy_generate(self.model, [prompt], max_new, eot_id=self.eot_token_id,
                                        tokenizer=self.tokenizer, stop_strings=[s for s in until if s],
                                        progress=False)
            text = truncate_at_stop(self.tok_decode(tokens), until)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            answers.append(text)
        return answers


def run_lm_eval(model, tokenizer, *, tasks: list[str], include_path: str | None = None, num_fewshot: int | None = None,
                limit: int | float | None = None, max_length: int | None = None, batch_size: int = 4,
                seed: int = 42, bootstrap_iters: int = 0) -> list[dict[str, Any]]:
    """Evaluate with ``lm_eval.simple_evaluate``; one result row per (task, metric)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise ValueError("lm_eval.tasks is empty; e.g. lm_eval.tasks=[adasplash_local]")
    include = [LOCAL_TASKS_DIR] + ([Path(include_path).expanduser()] if include_path else [])
    # lm-eval's own task index takes seconds to build; skip it when every task is a local one
    builtin_needed = not set(tasks) <= set().union(*(local_task_names(folder) for folder in include))
    manager = TaskManager(include_path=[str(folder) for folder in include], include_defaults=builtin_needed)
    lm = AdasplashLM(model=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    output = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager,
                             num_fewshot=num_fewshot, limit=limit, bootstrap_iters=bootstrap_iters,
                             log_samples=False, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                             fewshot_random_seed=seed)
    return result_rows(output["results"], max_length=lm.max_length)


def local_task_names(folder: Path) -> set[str]:
    """Task and group names defined by the YAML files in ``folder`` (top-level ``task:``/``group:``)."""
    names = set()
    for path in Path(folder).rglob("*.yaml"):
        for line in path.read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            if key in ("task", "group") and value.strip():
                names.add(value.strip().strip("'\""))
    return names


def result_rows(results: dict[str, dict[str, Any]], max_length: int | None = None) -> list[dict[str, Any]]:
    rows = []
    for task_name, metrics in results.items():
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            metric, filter_name = key.split(",", 1)
            rows.append({"task": "lm_eval", "subtask": task_name, "length": None, "max_length": max_length,
                         "metric": metric if filter_name == "none" else f"{metric} ({filter_name})",
                         "score": float(value), "error": None})
    return rows


if __name__ == "__main__":
    # lm-eval's own command line with the "adasplash" model registered:
    # python -m evals.lm_eval_adapter run --model adasplash --model_args ckpt=runs/smoke --tasks adasplash_local \
    #     --include_path evals/lm_eval_tasks
    import sys

    from lm_eval.__main__ import cli_evaluate

    sys.argv[0] = "lm_eval"
    cli_evaluate()
