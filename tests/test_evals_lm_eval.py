"""lm-eval adapter: loglikelihoods equal a direct computation with the model; offline tasks run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402

from adasplash_train.data.tokenizers import build_tokenizer  # noqa: E402
from adasplash_train.model import GPT, GPTConfig  # noqa: E402
from evals.generate import greedy_generate  # noqa: E402
from evals.lm_eval_adapter import AdasplashLM, run_lm_eval  # noqa: E402

MAX_LENGTH = 48


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=257, max_seq_len=MAX_LENGTH, n_layer=2, n_head=2, d_model=32,
                       attention={"name": "entmax", "backend": "auto", "alpha": 1.5})
    return GPT(config).eval(), build_tokenizer("byte")


def request(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def direct_logprob(model, tokens: list[int], first_scored: int) -> float:
    """Sum of log p(tokens[i] | tokens[:i]) for i >= first_scored, one unpadded forward."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([tokens[:-1]]))
    log_probs = F.log_softmax(logits[0].float(), dim=-1)
    return sum(log_probs[i - 1, tokens[i]].item() for i in range(first_scored, len(tokens)))


def test_registered_under_adasplash():
    assert get_model("adasplash") is AdasplashLM


def test_loglikelihood_equals_direct_computation(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    lm = AdasplashLM(model=model, tokenizer=tokenizer, batch_size=3)
    pairs = [("The sun rises in the", " east"), ("A", " much longer continuation here"),
             ("Numbers: 1 2 3", " 4"), ("x" * 70, " tail")]  # the last one is cut to max_length
    answers = lm.loglikelihood([request("loglikelihood", c, t) for c, t in pairs])
    for (context, continuation), (logprob, _) in zip(pairs, answers):
        whole = tokenizer.encode(context + continuation)
        expected = direct_logprob(model, whole[-(MAX_LENGTH + 1):], len(whole[-(MAX_LENGTH + 1):]) - len(tokenizer.encode(continuation)))
        assert logprob == pytest.approx(expected, abs=1e-4)


def test_is_greedy_flags_the_models_own_continuation(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    lm = AdasplashLM(model=model, tokenizer=tokenizer)
    context = "def main():"
    (own,) = greedy_generate(model, [tokenizer.encode(context)], 5, eot_id=None, progress=False)
    own_text = tokenizer.decode(own)
    greedy_flags = [flag for _, flag in lm.loglikelihood([request("loglikelihood", context, own_text),
                                                          request("loglikelihood", context, "\x00\x01")])]
    if tokenizer.encode(context + own_text)[len(tokenizer.encode(context)):] == own:
        assert greedy_flags[0] is True
    assert greedy_flags[1] is False


def test_loglikelihood_rolling_equals_direct_sum(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    lm = AdasplashLM(model=model, tokenizer=tokenizer)
    short = "A short paragraph."
    long = "Windows of the rolling loglikelihood do not overlap. " * 3  # > MAX_LENGTH bytes
    got_short, got_long = lm.loglikelihood_rolling([request("loglikelihood_rolling", short),
                                                    request("loglikelihood_rolling", long)])
    tokens = tokenizer.encode(short)
    assert got_short == pytest.approx(direct_logprob(model, [tokenizer.eot_id] + tokens, 1), abs=1e-4)
    # the long text: the first window predicts tokens[0:L] after eot; each later one predicts up to
    # L more tokens from an input of the L tokens before its last one (lm-eval's rolling windows)
    tokens = tokenizer.encode(long)
    expected = direct_logprob(model, [tokenizer.eot_id] + tokens[:MAX_LENGTH], 1)
    for start in range(MAX_LENGTH, len(tokens), MAX_LENGTH):
        end = min(start + MAX_LENGTH, len(tokens))
        window = tokens[end - MAX_LENGTH - 1:end]
        expected += direct_logprob(model, window, len(window) - (end - start))
    assert got_long == pytest.approx(expected, abs=1e-3)


def test_generate_until_stops_at_the_until_string(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    lm = AdasplashLM(model=model, tokenizer=tokenizer)
    context = "Question: hello\nAnswer:"
    (free,) = greedy_generate(model, [tokenizer.encode(context)], 12, eot_id=tokenizer.eot_id, progress=False)
    free_text = tokenizer.decode(free)
    stop = free_text[3:5] if len(free_text) >= 5 else "\n"
    (text,) = lm.generate_until([request("generate_until", context, {"until": [stop], "max_gen_toks": 12})])
    assert text == free_text[:free_text.find(stop)] if stop in free_text else text == free_text


def test_simple_evaluate_on_the_offline_tasks(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    rows = run_lm_eval(model, tokenizer, tasks=["adasplash_local"], limit=3, batch_size=4)
    found = {(row["subtask"], row["metric"]) for row in rows}
    assert {("adasplash_mc", "acc"), ("adasplash_mc", "acc_norm"), ("adasplash_paragraphs", "word_perplexity"),
            ("adasplash_paragraphs", "bits_per_byte")} <= found
    assert any(task == "adasplash_short_answer" and metric.startswith("exact_match") for task, metric in found)
    for row in rows:
        assert row["task"] == "lm_eval" and math.isfinite(row["score"])
        if row["metric"] == "acc":
            assert 0 <= row["score"] <= 1


def test_missing_arguments_are_explained():
    with pytest.raises(ValueError, match="ckpt=PATH"):
        AdasplashLM()
    with pytest.raises(ValueError, match="tasks"):
        run_lm_eval(object(), object(), tasks=[])
