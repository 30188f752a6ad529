"""Greedy decoding: cache == no cache on the real model, stopping rules, order, grouping."""

from __future__ import annotations

import pytest
import torch

from adasplash_train.model import GPT, GPTConfig
from evals.generate import cast_for_inference, greedy_generate, length_groups, truncate_at_stop


class NextTokenModel(torch.nn.Module):
    """Predicts (last token + 1) mod vocab: outputs are known in advance. Supports the cache API."""

    def __init__(self, vocab_size: int = 50):
        super().__init__()
        self.vocab_size = vocab_size
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[tuple[int, int]] = []
        self.grad_enabled: list[bool] = []

    def new_kv_cache(self, batch_size=None):
        return {"length": 0}

    def forward(self, idx, targets=None, doc_ids=None, cache=None, last_only=False):
        self.calls.append(tuple(idx.shape))
        self.grad_enabled.append(torch.is_grad_enabled())
        if cache is not None:
            cache["length"] += idx.shape[1]
        logits = torch.nn.functional.one_hot((idx + 1) % self.vocab_size, self.vocab_size).float()
        return (logits[:, -1:] if last_only else logits), None


def tiny_gpt(attention: dict) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=64, max_seq_len=16, n_layer=2, n_head=2, d_model=32, attention=attention)
    return GPT(config).eval()


@pytest.mark.parametrize("attention", [{"name": "softmax", "backend": "auto"},
                                       {"name": "entmax", "backend": "auto", "alpha": 1.5}])
def test_cached_decoding_equals_full_recompute(attention):
    model = tiny_gpt(attention)
    prompts = [[1, 2, 3, 4, 5], [9, 8, 7, 6, 5], [3, 3, 3], [10] * 20]  # the last one exceeds max_seq_len
    cached = greedy_generate(model, prompts, 8, eot_id=None, batch_size=2, progress=False)
    recomputed = greedy_generate(model, prompts, 8, eot_id=None, batch_size=1, use_cache=False, progress=False)
    assert cached == recomputed
    assert all(len(out) == 8 for out in cached)


def test_stops_at_eot_and_keeps_input_order():
    model = NextTokenModel(vocab_size=50)
    prompts = [[40], [1, 2], [45], [7, 8]]
    outputs = greedy_generate(model, prompts, 6, eot_id=47, batch_size=8, progress=False)
    assert outputs == [[41, 42, 43, 44, 45, 46], [3, 4, 5, 6, 7, 8], [46], [9, 10, 11, 12, 13, 14]]
    # one prefill per distinct length, then one-token steps; stops as soon as a whole batch is done
    assert (2, 1) in model.calls and (2, 2) in model.calls
    assert all(shape[1] == 1 for shape in model.calls if shape not in [(2, 1), (2, 2)])
    assert not any(model.grad_enabled)  # decoding builds no autograd graph (memory at long context)


def test_stop_strings_end_a_row_early():
    class Digits:
        def decode(self, ids):
            return "".join(str(i % 10) for i in ids)

    outputs = greedy_generate(NextTokenModel(50), [[0]], 10, eot_id=None, tokenizer=Digits(),
                              stop_strings=["34"], progress=False)
    assert outputs == [[1, 2, 3, 4]]
    assert truncate_at_stop("1234", ["34", "2"]) == "1"
    assert truncate_at_stop("abc", ["z"]) == "abc"


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="batch_size"):
        length_groups([[1]], 0)
    with pytest.raises(ValueError, match="empty"):
        greedy_generate(NextTokenModel(), [[]], 3, eot_id=None, progress=False)
    with pytest.raises(ValueError, match="tokenizer"):
        greedy_generate(NextTokenModel(), [[1]], 3, eot_id=None, stop_strings=["x"], progress=False)
    assert greedy_generate(NextTokenModel(), [[1]], 0, eot_id=None, progress=False) == [[]]


def test_cast_for_inference():
    model = tiny_gpt({"name": "softmax", "backend": "auto"})
    assert next(cast_for_inference(model, "auto").parameters()).dtype == torch.float32  # CPU
    assert next(cast_for_inference(model, "bfloat16").parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        cast_for_inference(model, "fp8")
