"""Synthetic long-context documents: exact length, one document, the answer at the end."""

import random
import re

import numpy as np
import pytest
import torch

from adasplash_train.data import TokenDataModule, build_tokenizer
from adasplash_train.data.synthetic import TASKS, SyntheticTasks

LENGTHS = (129, 257, 1025, 4097)


def _tokenizers():
    names = ["byte"]
    try:
        build_tokenizer("gpt2")
        names.append("gpt2")
    except FileNotFoundError:
        pass
    return names


def _tasks(tokenizer):
    filler_text = "def function(argument):\n    return argument * 2  # a comment\n" * 200
    ids = tokenizer.encode(filler_text)
    # Document boundaries in the filler corpus must never leak into a synthetic sample.
    corpus = np.array(([tokenizer.eot_id] + ids) * 3, dtype=np.int64)
    return SyntheticTasks(tokenizer, corpus)


@pytest.mark.parametrize("tokenizer_name", _tokenizers())
@pytest.mark.parametrize("task", TASKS)
def test_exact_length_one_document_answer_last(tokenizer_name, task):
    tokenizer = build_tokenizer(tokenizer_name)
    generator = _tasks(tokenizer)
    for length in LENGTHS:
        for seed in range(3):
            sample = getattr(generator, task)(length, random.Random(seed))
            tokens = sample.tokens
            assert len(tokens) == length and sample.task == task
            assert tokens[0] == tokenizer.eot_id and tokenizer.eot_id not in tokens[1:]
            assert tokens[-len(sample.answer_ids):].tolist() == list(sample.answer_ids)
            _check_answer_is_supported(task, tokenizer.decode(tokens[1:]), sample)


def _check_answer_is_supported(task, text, sample):
    if task == "kv_retrieval":
        key = re.search(r"what is the value of key (\w+)\? Answer:", text).group(1)
        assert f"The value of key {key} is {sample.answer}." in text
        assert text.endswith(f"Answer: {sample.answer}")
    elif task == "variable_tracking":
        value = re.search(r"assigned the value (\d+)\? Answer:", text).group(1)
        names = sample.answer.split(" ")
        assert f"VAR {names[0]} = {value}\n" in text
        for previous, name in zip(names, names[1:]):
            assert f"VAR {name} = VAR {previous}\n" in text
        # Each assignment comes before the next link of the chain.
        positions = [text.index(f"VAR {name} =") for name in names]
        assert positions == sorted(positions)
    else:
        opening, _, rest = text.partition("<<<\n")
        passage, _, copied = rest.partition("\n>>>\nCopy:\n")
        assert sample.answer_ids and copied.endswith(sample.answer) and passage.endswith(sample.answer)


def test_too_short_a_window_is_explained():
    generator = _tasks(build_tokenizer("byte"))
    with pytest.raises(ValueError, match="synthetic_fraction=0"):
        generator.kv_retrieval(40, random.Random(0))
    with pytest.raises(ValueError, match="unknown synthetic task"):
        SyntheticTasks(build_tokenizer("byte"), np.arange(100), tasks=("sorting",))


def test_datamodule_mixes_the_configured_fraction(tmp_path):
    args = dict(source="stdlib", source_args={"max_docs": 20}, tokenizer="byte", seq_len=256, batch_size=8,
                num_train_samples=400, val_batches=1, seed=3, cache_dir=str(tmp_path), progress=False)
    datamodule = TokenDataModule(synthetic_fraction=0.25, **args)
    datamodule.prepare_data()
    datamodule.setup("fit")
    dataset = datamodule.train_dataset()
    synthetic = [i for i in range(400) if dataset.is_synthetic(i)]
    assert 60 <= len(synthetic) <= 140
    sample = dataset[synthetic[0]]
    assert sample["input_ids"].shape == (256,) and int(sample["doc_ids"].max()) == 0
    # Real windows are untouched by the mixture: same index, same tokens as without it.
    plain = TokenDataModule(synthetic_fraction=0.0, **args)
    plain.setup("fit")
    real_index = next(i for i in range(400) if not dataset.is_synthetic(i))
    assert torch.equal(dataset[real_index]["input_ids"], plain.train_dataset()[real_index]["input_ids"])
    # And the synthetic ones are reproducible.
    assert torch.equal(dataset[synthetic[0]]["input_ids"], datamodule.train_dataset()[synthetic[0]]["input_ids"])


def test_datamodule_rejects_a_context_too_short_for_synthetic_tasks(tmp_path):
    datamodule = TokenDataModule(source="stdlib", source_args={"max_docs": 20}, tokenizer="byte", seq_len=32,
                                 num_train_samples=8, synthetic_fraction=0.5, cache_dir=str(tmp_path), progress=False)
    datamodule.prepare_data()
    with pytest.raises(ValueError, match="too short for the synthetic task"):
        datamodule.setup("fit")
