"""RULER's synthetic long-context tasks, regenerated offline on our tokenizer.

    from evals.ruler import build_task
    task = build_task("niah_single_2", tokenizer)
    samples = task.samples(length=8192, num_samples=25, seed=42)

Task names and arguments follow RULER's scripts/synthetic.yaml (see ``constants.TASKS``).
"""

from __future__ import annotations

from pathlib import Path

from evals.ruler.base import RulerSample, RulerTask
from evals.ruler.common_words import CommonWordsTask
from evals.ruler.constants import QA_TASKS, SYNTHETIC_TASKS, TASKS
from evals.ruler.freq_words import FreqWordsTask
from evals.ruler.niah import NiahTask
from evals.ruler.qa import QaTask
from evals.ruler.scoring import score_sample, string_match_all, string_match_part
from evals.ruler.variable_tracking import VariableTrackingTask

FAMILIES = {
    "niah": NiahTask,
    "variable_tracking": VariableTrackingTask,
    "common_words_extraction": CommonWordsTask,
    "freq_words_extraction": FreqWordsTask,
    "qa": QaTask,
}

__all__ = ["RulerSample", "RulerTask", "TASKS", "SYNTHETIC_TASKS", "QA_TASKS", "build_task", "qa_skip_reason",
           "score_sample", "string_match_all", "string_match_part"]


def build_task(name: str, tokenizer, *, haystack_dir=None, qa_files: dict | None = None,
               tokens_to_generate: int | None = None, **overrides) -> RulerTask:
    """A RULER task by its RULER name, with RULER's arguments unless ``overrides`` change them.

    ``haystack_dir``: folder of essay .txt files (niah essay haystacks); ``qa_files``: maps
    "squad"/"hotpotqa" to local JSON files for qa_1/qa_2.
    """
    if name not in TASKS:
        raise ValueError(f"unknown RULER task {name!r}; choose from {list(TASKS)}")
    family, arguments = TASKS[name]
    arguments = {**arguments, **overrides}
    if family in ("niah", "variable_tracking"):
        needs_essay = arguments.get("type_haystack", "noise" if family == "variable_tracking" else "essay") == "essay"
        arguments["haystack_dir"] = haystack_dir if needs_essay else None
    if family == "qa":
        reason = qa_skip_reason(name, qa_files)
        if reason:
            raise ValueError(reason)
        arguments["path"] = Path(qa_files[arguments["dataset"]]).expanduser()
    return FAMILIES[family](name, tokenizer, tokens_to_generate=tokens_to_generate, **arguments)


def qa_skip_reason(name: str, qa_files: dict | None) -> str | None:
    """Why a QA task cannot run (its JSON file was not given), or None when it can."""
    if name not in QA_TASKS:
        return None
    dataset = TASKS[name][1]["dataset"]
    if not qa_files or not qa_files.get(dataset):
        return (f"{name} skipped: it needs the {dataset} JSON file, which is never downloaded; pass "
                f"ruler.qa_files.{dataset}=/path/to/{'squad-dev-v2.0' if dataset == 'squad' else 'hotpotqa-dev'}.json")
    return None
