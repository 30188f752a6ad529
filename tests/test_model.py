"""The GPT model and the attention registry: masking, backends, KV cache, clear errors."""

import math

import pytest
import torch

from adasplash_train.attention import allowed_mask, available, build_attention
from adasplash_train.model import GPT, GPTConfig
from kernels import reference


def tiny(attention, **kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_seq_len=48, attention=attention)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


ATTENTIONS = [
    {"name": "softmax", "backend": "math"},
    {"name": "softmax", "backend": "flash2"},
    {"name": "entmax", "backend": "torch", "alpha": 1.5},
    {"name": "entmax", "backend": "torch", "alpha": 2.0},
]
# block-selection attentions (blocks of 8 keys: the 18-token prefill below ends inside a block)
BLOCK_ATTENTIONS = [
    {"name": "hierarchical", "backend": "torch", "alpha": 1.5, "block_size": 8},
    {"name": "hierarchical", "backend": "torch", "alpha": 2.0, "block_size": 8},
    {"name": "topk_blocks", "backend": "torch", "top_k": 2, "block_size": 8},
]


def dense_softmax(q, k, v, mask):
    """Softmax attention from scratch in float64 (independent of SDPA)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1).double(), v.repeat_interleave(rep, 1).double()
    s = q.double() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("backend", ["math", "flash2", "auto"])
@pytest.mark.parametrize("packed", [False, True])
def test_softmax_backends_match_dense_reference(backend, packed):
    B, H, Hkv, N, D = 2, 4, 2, 37, 16
    q, k, v = torch.randn(B, H, N, D), torch.randn(B, Hkv, N, D), torch.randn(B, Hkv, N, D)
    doc_ids = torch.tensor([[0] * 10 + [1] * 20 + [2] * 7, [0] * 37]) if packed else None
    out = build_attention("softmax", backend=backend)(q, k, v, causal=True, doc_ids=doc_ids)
    expected = dense_softmax(q, k, v, allowed_mask(N, N, True, doc_ids, q.device))
    assert torch.isfinite(out).all()
    assert (out.double() - expected).norm() / expected.norm() < 1e-5


@pytest.mark.parametrize("attention", ATTENTIONS, ids=lambda a: f"{a['name']}-{a['backend']}-{a.get('alpha', '')}")
def test_packed_documents_equal_separate_runs(attention):
    model = tiny(attention)
    idx = torch.randint(0, 97, (2, 40))
    cut = 15
    doc_ids = torch.zeros(2, 40, dtype=torch.long)
    doc_ids[:, cut:] = 1
    with torch.no_grad():
        packed, _ = model(idx, doc_ids=doc_ids)
        first, _ = model(idx[:, :cut])
        second, _ = model(idx[:, cut:])
    # RoPE only sees relative positions, so a document's logits do not depend on where it sits
    assert torch.allclose(packed[:, :cut], first, atol=1e-5)
    assert torch.allclose(packed[:, cut:], second, atol=1e-5)


@pytest.mark.parametrize("attention", ATTENTIONS + BLOCK_ATTENTIONS, ids=lambda a: "-".join(map(str, a.values())))
def test_kv_cache_decode_matches_full_forward(attention):
    model = tiny(attention)
    idx = torch.randint(0, 97, (2, 30))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_kv_cache(2)
        pieces = [model(idx[:, :18], cache=cache)[0]]
        for t in range(18, 30):
            pieces.append(model(idx[:, t:t + 1], cache=cache)[0])
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-5)
    assert cache.length() == 30
    with torch.no_grad():
        last, _ = model(idx, last_only=True)
    assert last.shape == (2, 1, 97) and torch.allclose(last[:, 0], full[:, -1], atol=1e-5)


def test_decode_extrapolates_past_training_length():
    model = tiny({"name": "entmax", "backend": "torch"}, max_seq_len=16)
    idx = torch.randint(0, 97, (1, 40))
    with torch.no_grad():
        logits, _ = model(idx)
    assert logits.shape == (1, 40, 97) and torch.isfinite(logits).all()


def test_entmax_registry_equals_reference_and_reports_stats():
    q, k, v = torch.randn(1, 4, 33, 16), torch.randn(1, 2, 33, 16), torch.randn(1, 2, 33, 16)
    fn = build_attention("entmax", backend="torch", alpha=1.5)
    out, stats = fn(q, k, v, causal=True, return_stats=True)
    expected = reference.entmax_attention(q.double(), k.double(), v.double(), alpha=1.5, causal=True)
    assert (out.double() - expected).norm() / expected.norm() < 1e-5
    assert 0.0 <= stats["sparsity"] <= 1.0


def test_attention_stats_collected_per_layer():
    model = tiny({"name": "entmax", "backend": "torch", "alpha": 1.5})
    model.set_collect_attention_stats(True)
    with torch.no_grad():
        model(torch.randint(0, 97, (1, 40)))
    stats = model.attention_stats()
    assert len(stats) == 2 and all(0.0 <= s["sparsity"] <= 1.0 for s in stats)
    model.set_collect_attention_stats(False)
    assert model.attention_stats() == [None, None]


def test_gradients_reach_every_parameter():
    model = tiny({"name": "entmax", "backend": "torch", "alpha": 1.5}).train()
    idx, targets = torch.randint(0, 97, (2, 24)), torch.randint(0, 97, (2, 24))
    _, loss = model(idx, targets=targets)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert loss.item() == pytest.approx(math.log(97), rel=0.1)  # a fresh model is near uniform


def test_parameter_count_and_flops():
    model = tiny({"name": "softmax", "backend": "math"}, tie_embeddings=True)
    c = model.config
    per_layer = c.d_model * (c.n_head + 2 * c.n_kv_head) * c.head_dim + c.d_model ** 2 \
        + 3 * c.d_model * c.ffn_hidden + 2 * c.d_model
    assert model.num_params() == c.n_layer * per_layer + c.d_model
    assert model.flops_per_token() == 6 * model.num_params() + 6 * c.n_layer * c.d_model * c.max_seq_len


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="unknown attention.name='nope'"):
        build_attention("nope")
    with pytest.raises(ValueError, match=r"attention.alpha=2.5 must be in \(1, 2\]"):
        build_attention("entmax", alpha=2.5)
    with pytest.raises(ValueError, match=r"attention.alpha=1.0"):
        build_attention("entmax", alpha=1.0)
    with pytest.raises(ValueError, match="not a softmax backend"):
        build_attention("softmax", backend="triton")
    with pytest.raises(ValueError, match="got options"):
        build_attention("softmax", alpha=1.5)
    with pytest.raises(ValueError, match="head dim mismatch"):
        build_attention("softmax")(torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 32), torch.randn(1, 2, 8, 32))
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        build_attention("entmax")(torch.randn(1, 3, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16))
    with pytest.raises(ValueError, match="n_kv_head"):
        GPTConfig(n_head=6, n_kv_head=4, d_model=48)
    assert {"softmax", "entmax"} <= set(available())


def test_rope_tables_stay_float32_when_the_model_is_cast_to_bf16():
    model = tiny({"name": "softmax", "backend": "math"}, d_model=64, n_head=2, n_kv_head=1)
    reference_cos, _ = model.rotary(0, 8192, torch.device("cpu"))
    reference_cos = reference_cos.clone()
    model.to(torch.bfloat16)
    model.rotary._cos = None  # force a rebuild, as a device move or a longer context does
    model.rotary._build(16, torch.device("cpu"))
    cos, _ = model.rotary(0, 8192, torch.device("cpu"))
    assert cos.dtype == torch.float32 and torch.equal(cos, reference_cos)
