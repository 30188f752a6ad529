"""task=synthetic: teacher-forced scoring equals the model's own logits, oracle / constant models
score 100 / 0, samples are exact-length with the answer last, filler comes from the held-out split,
the runner writes rows and the report shows them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from adasplash_train.data import build_tokenizer
from adasplash_train.data.shards import TokenShards, build_token_shards, shard_dir_name
from adasplash_train.data.sources import build_source
from adasplash_train.data.synthetic import TASKS
from adasplash_train.model import GPT, GPTConfig
from evals.__main__ import CONFIG_DIR
from evals.report import build_report, latest_rows
from evals.runner import evaluate
from evals.synthetic import (Filler, answer_predictions, build_samples, load_filler, metrics, run_synthetic_task,
                             score_samples)

TRAIN_LENGTH = 128
# one character per document of the test corpus; none of them occurs in the tasks' own text
DOC_CHARS = "#$%&~^|`"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("byte")


@pytest.fixture(scope="module")
def filler(tokenizer):
    text = "for line in lines:\n    total += len(line)  # count the characters\n" * 40
    return Filler(np.array([tokenizer.eot_id] + tokenizer.encode(text), dtype=np.int64), "test")


def tiny_gpt(attention: dict | None = None) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=320, max_seq_len=TRAIN_LENGTH, n_layer=2, n_head=2, d_model=32,
                       attention=attention or {"name": "softmax", "backend": "auto"})
    return GPT(config).eval()


class OracleModel(torch.nn.Module):
    """All probability mass on the true next token (it reads ahead in its own input); records what it is fed."""

    def __init__(self, vocab_size: int = 257, constant: int | None = None):
        super().__init__()
        self.vocab_size, self.constant = vocab_size, constant
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = GPTConfig(vocab_size=vocab_size, max_seq_len=TRAIN_LENGTH, n_layer=1, n_head=1, d_model=2)
        self.fed: list[torch.Tensor] = []

    def forward(self, idx, targets=None, doc_ids=None, cache=None, last_only=False):
        self.fed.append(idx.clone())
        following = torch.cat([idx[:, 1:], idx[:, -1:]], dim=1)
        if self.constant is not None:
            following = torch.full_like(idx, self.constant)
        return torch.nn.functional.one_hot(following, self.vocab_size).float(), None


@pytest.mark.parametrize("attention", [{"name": "softmax", "backend": "auto"},
                                       {"name": "entmax", "backend": "auto", "alpha": 1.5}])
def test_scoring_equals_direct_computation(tokenizer, filler, attention):
    model = tiny_gpt(attention)
    samples = [s for task in TASKS for s in build_samples(tokenizer, filler.tokens, task, 160, 2, seed=3)]
    scored = score_samples(model, samples, batch_size=4)
    for sample, result in zip(samples, scored):
        n = len(sample.answer_ids)
        with torch.no_grad():
            logits = model(torch.tensor(sample.tokens[None]))[0][0, -1 - n:-1]
        direct = logits.argmax(-1)
        predicted = torch.tensor(result["predicted_ids"])
        # equal up to float ties: a differing argmax must be (within rounding) a maximum of the direct logits
        chosen = logits.gather(-1, predicted[:, None])[:, 0]
        assert torch.all((predicted == direct) | (chosen >= logits.max(-1).values - 1e-5))
        right = int((direct == torch.tensor(sample.answer_ids)).sum())
        assert result["answer_tokens"] == n and abs(result["correct_tokens"] - right) <= int((predicted != direct).sum())
    # chunked head == one chunk
    tokens = torch.tensor(np.stack([s.tokens for s in samples[:3]]))
    lengths = [len(s.answer_ids) for s in samples[:3]]
    chunked = answer_predictions(model, tokens, lengths, chunk=3)
    whole = answer_predictions(model, tokens, lengths, chunk=10_000)
    assert all(torch.equal(a, b) for a, b in zip(chunked, whole))


def test_oracle_scores_100_and_constant_scores_0(tokenizer, filler):
    oracle = OracleModel()
    rows = run_synthetic_task(oracle, tokenizer, "kv_retrieval", 200, filler=filler, num_samples=3, batch_size=2,
                              progress=False)
    assert {r["metric"]: r["score"] for r in rows} == {"exact_match": 100.0, "token_accuracy": 100.0}
    for task in TASKS:
        samples = build_samples(tokenizer, filler.tokens, task, 200, 3, seed=0)
        assert metrics(score_samples(OracleModel(), samples)) == {"exact_match": 100.0, "token_accuracy": 100.0}
        # byte 0 never occurs in an answer
        assert metrics(score_samples(OracleModel(constant=0), samples)) == {"exact_match": 0.0, "token_accuracy": 0.0}


def test_samples_fed_are_exact_length_and_end_with_the_answer(tokenizer, filler):
    model = OracleModel()
    for task in TASKS:
        for length in (140, 300):
            samples = build_samples(tokenizer, filler.tokens, task, length, 3, seed=7)
            model.fed.clear()
            score_samples(model, samples, batch_size=2)
            fed = [row for batch in model.fed for row in batch]
            assert len(fed) == 3
            for row, sample in zip(fed, samples):
                n = len(sample.answer_ids)
                assert row.shape == (length,) and row[0] == tokenizer.eot_id
                assert row[-n:].tolist() == list(sample.answer_ids)
                assert tokenizer.decode(row[-n:].tolist()).strip() == sample.answer.strip() or task == "copy"
    # a function of (seed, task, length, index): reproducible, and the index matters
    again = build_samples(tokenizer, filler.tokens, "copy", 300, 3, seed=7)
    assert [s.tokens.tolist() for s in again] == [s.tokens.tolist() for s in build_samples(
        tokenizer, filler.tokens, "copy", 300, 3, seed=7)]
    assert again[0].tokens.tolist() != again[1].tokens.tolist()


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory, tokenizer):
    """A token cache of 8 one-character documents, half held out, and a checkpoint that names it."""
    root = tmp_path_factory.mktemp("synthetic")
    docs = root / "docs"
    docs.mkdir()
    for i, char in enumerate(DOC_CHARS):
        (docs / f"{i}.txt").write_text((char * 7 + " ") * 60)
    source = build_source("files", paths=[str(docs)])
    name = shard_dir_name(source.cache_key(), tokenizer.name, 0.5)
    build_token_shards(source, tokenizer, root / "cache" / "tokens" / name, val_fraction=0.5, progress=False)
    shards = TokenShards(root / "cache" / "tokens" / name)
    held_out = {tokenizer.decode(shards.val.document(i)).strip()[0] for i in range(shards.val.num_docs)}
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"TokenDataModule": {"shard_dir": name, "seq_len": TRAIN_LENGTH}}, run / "checkpoints" / "last.ckpt")
    return {"cache": root / "cache", "run": run, "name": name, "held_out": held_out}


def eval_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="eval", overrides=overrides)


def test_runner_writes_rows_with_held_out_filler(tokenizer, token_cache, tmp_path):
    results_file = tmp_path / "results.jsonl"
    cfg = eval_config([f"ckpt={token_cache['run']}", "task=synthetic", f"lengths=[{TRAIN_LENGTH},256]",
                       "synthetic.num_samples=2", f"synthetic.cache_dir={token_cache['cache']}", "progress=false",
                       "synthetic.filler=val"])
    rows = evaluate(cfg, model=tiny_gpt(), tokenizer=tokenizer, output_dir=tmp_path, results_file=results_file)
    written = [json.loads(line) for line in results_file.read_text().splitlines()]
    assert written == json.loads(json.dumps(rows))
    assert len(rows) == len(TASKS) * 2 * 2 and not any(r["error"] for r in rows)
    assert {(r["subtask"], r["length"], r["metric"]) for r in rows} == {
        (t, n, m) for t in TASKS for n in (TRAIN_LENGTH, 256) for m in ("exact_match", "token_accuracy")}
    assert all(r["task"] == "synthetic" and r["run"] == "run" and 0 <= r["score"] <= 100 for r in rows)
    assert all(r["beyond_training"] == (r["length"] > TRAIN_LENGTH) for r in rows)
    assert {r["filler"] for r in rows} == {f"val:{token_cache['name']}"}
    # the filler is the held-out documents only
    predictions = sorted((tmp_path / "predictions").glob("run_synthetic_*.jsonl"))
    assert len(predictions) == len(TASKS) * 2
    filler = load_filler(tokenizer, ckpt=token_cache["run"], cache_dir=token_cache["cache"])
    text = "".join(tokenizer.decode(s.tokens.tolist()) for task in TASKS
                   for s in build_samples(tokenizer, filler.tokens, task, 256, 3, seed=1))
    used = {char for char in DOC_CHARS if char in text}
    assert used and used <= token_cache["held_out"]


def test_filler_fallbacks(tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="filler=val"):
        load_filler(tokenizer, mode="val", ckpt=None)
    with pytest.raises(ValueError, match="synthetic.filler"):
        load_filler(tokenizer, mode="train")
    # no checkpoint to find the run's cache: the essay haystack, named in the rows
    cfg = eval_config(["task=synthetic", "lengths=[200]", "synthetic.num_samples=1", "synthetic.tasks=[copy]",
                       "progress=false", "save_predictions=false"])
    rows = evaluate(cfg, model=tiny_gpt(), tokenizer=tokenizer, results_file=tmp_path / "r.jsonl")
    assert len(rows) == 2 and rows[0]["filler"].startswith("haystack:")
    with pytest.raises(ValueError, match="unknown tasks"):
        evaluate(eval_config(["task=synthetic", "synthetic.tasks=[recall]"]), model=object(), tokenizer=tokenizer)


def test_report_shows_synthetic_section(tmp_path):
    def row(run, attention, task, length, metric, score, **extra):
        return {"run": run, "attention": attention, "train_length": 1024, "task": "synthetic", "subtask": task,
                "length": length, "metric": metric, "score": score, "filler": "val:x", "error": None, **extra}

    rows = []
    for run, attention, exact in (("e", "entmax", 80.0), ("s", "softmax", 60.0)):
        for task in ("kv_retrieval", "copy"):
            for length, factor in ((1024, 1.0), (2048, 0.5)):
                rows.append(row(run, attention, task, length, "exact_match", exact * factor))
                rows.append(row(run, attention, task, length, "token_accuracy", 90.0 * factor))
    # a failed unit superseded by a later success, and a RULER row kept apart
    rows.insert(0, {"run": "e", "attention": "entmax", "task": "synthetic", "subtask": "copy", "length": 1024,
                    "score": None, "error": "OutOfMemoryError: boom"})
    rows.append({"run": "e", "attention": "entmax", "train_length": 1024, "task": "ruler", "subtask": "vt",
                 "length": 1024, "score": 10.0, "metric": "string_match_all", "error": None})
    assert not any(r.get("error") for r in latest_rows(rows))
    results_file = tmp_path / "results.jsonl"
    results_file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    text = build_report([], [results_file], tmp_path / "r.md").read_text()
    section = text.split("## Synthetic retrieval (in-distribution)")[1].split("## entmax")[0]
    assert "### e" in section and "### s" in section and "| task | 1k | 2k† |" in section
    assert "| kv_retrieval | 80.0 (90.0) | 40.0 (45.0) |" in section
    assert "| **average** | 80.0 (90.0) | 40.0 (45.0) |" in section
    assert "| synthetic avg | 1024 | 80.0 | 60.0 | +20.0 |" in text
    assert "| synthetic avg | 2048† | 40.0 | 30.0 | +10.0 |" in text
    assert "| RULER avg | 1024 |" not in text  # no softmax RULER rows: no RULER difference
    assert "## Errors" not in text

    # a later failure replaces that unit's scores: the cell and the average say so
    rows.append({"run": "e", "attention": "entmax", "task": "synthetic", "subtask": "copy", "length": 2048,
                 "score": None, "error": "OutOfMemoryError: boom"})
    results_file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    text = build_report([], [results_file], tmp_path / "r.md").read_text()
    assert "| copy | 80.0 (90.0) | error |" in text and "| **average** | 80.0 (90.0) | – |" in text
    assert "| synthetic avg | 2048† |" not in text
    assert "No synthetic results." in build_report([], [], tmp_path / "empty.md").read_text()


def test_synthetic_averages_cover_the_same_tasks_for_every_run(tmp_path):
    """A run that ran fewer synthetic tasks gets no average, and no entmax - softmax row, as for RULER."""
    rows = [{"run": run, "attention": attention, "train_length": 1024, "task": "synthetic", "subtask": task,
             "length": 1024, "metric": metric, "score": score, "filler": "val:x", "error": None}
            for run, attention, task, score in [("s", "softmax", "kv_retrieval", 10.0), ("s", "softmax", "copy", 30.0),
                                                ("e", "entmax", "kv_retrieval", 50.0)]
            for metric in ("exact_match", "token_accuracy")]
    results_file = tmp_path / "results.jsonl"
    results_file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    text = build_report([], [results_file], tmp_path / "r.md").read_text()
    section = text.split("## Synthetic retrieval (in-distribution)")[1].split("## entmax")[0]
    softmax, entmax = section.split("### s")[1], section.split("### e")[1].split("### s")[0]
    assert "| **average** | 20.0 (20.0) |" in softmax
    assert "| kv_retrieval | 50.0 (50.0) |" in entmax and "| **average** | – |" in entmax
    assert "| synthetic avg |" not in text
