"""Hierarchical entmax attention and the top-k block baseline on a CUDA GPU (skipped without one).

The Triton kernel against the exact reference (float32 on the GPU from the same bf16 inputs, so both
see identical block selections) at 2k tokens, forward and gradients; a forward at 8k; a bf16 training
step of a small GPT through the registry.
"""

import math

import pytest
import torch

from helpers import rel_error

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

if torch.cuda.is_available():
    from adasplash_train.model import GPT, GPTConfig
    from kernels import hierarchical


def rope_qkv(batch, heads, kv_heads, seq_len, head_dim, *, temperature, seed, dtype=torch.bfloat16):
    """RoPE-rotated q/k around one shared direction per head plus noise: scores decay with distance,
    so nearby key blocks score high and far ones low, as in trained models."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=gen, device="cuda")  # noqa: E731
    direction = randn(1, kv_heads, 1, head_dim)
    q = direction.repeat_interleave(heads // kv_heads, dim=1) + 0.5 * randn(batch, heads, seq_len, head_dim)
    k = direction + 0.5 * randn(batch, kv_heads, seq_len, head_dim)
    q = q / q.norm(dim=-1, keepdim=True) * math.sqrt(head_dim) * temperature
    k = k / k.norm(dim=-1, keepdim=True) * math.sqrt(head_dim)
    half = head_dim // 2
    angles = torch.arange(seq_len, device="cuda")[:, None] * 10000.0 ** (-torch.arange(half, device="cuda") / half)
    cos, sin = angles.cos(), angles.sin()

    def rotate(x):
        return torch.cat([x[..., :half] * cos - x[..., half:] * sin, x[..., :half] * sin + x[..., half:] * cos], -1)

    v = randn(batch, kv_heads, seq_len, head_dim)
    return [t.to(dtype).contiguous() for t in (rotate(q), rotate(k), v)]


DOCS = (300, 1, 700, 47, 1000)


@pytest.mark.parametrize("method,option,causal,kv_heads,head_dim,block_size,with_docs", [
    ("hierarchical", 1.5, True, 4, 64, 64, False),
    ("hierarchical", 2.0, True, 2, 128, 64, False),
    ("hierarchical", 1.5, False, 4, 64, 32, False),
    ("hierarchical", 1.5, True, 4, 64, 128, True),
    ("topk_blocks", 8, True, 4, 64, 64, False),
    ("topk_blocks", 4, True, 2, 128, 64, True),
])
def test_forward_and_gradients_match_reference(method, option, causal, kv_heads, head_dim, block_size, with_docs):
    seq_len, heads = 2048, 4
    q, k, v = rope_qkv(1, heads, kv_heads, seq_len, head_dim, temperature=0.5, seed=1)
    doc_ids = None
    if with_docs:
        doc_ids = torch.repeat_interleave(torch.arange(5, device="cuda"), torch.tensor(DOCS, device="cuda"))[None]
    if method == "hierarchical":
        fn, kwargs = hierarchical.hierarchical_attention, {"alpha": option}
    else:
        fn, kwargs = hierarchical.topk_block_attention, {"top_k": option}
    kwargs.update(block_size=block_size, causal=causal, doc_ids=doc_ids, return_stats=True)

    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out, stats = fn(q, k, v, backend="triton", **kwargs)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref_out, ref_stats = fn(q32, k32, v32, backend="torch", **kwargs)
    ref_grads = torch.autograd.grad(ref_out, (q32, k32, v32), grad_out.float())

    errors = {"out": rel_error(out, ref_out)}
    errors.update({name: rel_error(g, r) for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads)})
    assert errors["out"] <= 2e-2, errors
    assert max(errors.values()) <= 3e-2, errors
    assert stats == ref_stats
    assert 0.0 < stats["selected_block_fraction"] < 1.0, stats


def test_forward_at_8k_matches_reference_and_skips_blocks():
    q, k, v = rope_qkv(1, 8, 4, 8192, 64, temperature=0.5, seed=2)
    with torch.no_grad():
        out, stats = hierarchical.hierarchical_attention(q, k, v, block_size=64, return_stats=True)
        expected = hierarchical.hierarchical_attention(q.float(), k.float(), v.float(), block_size=64,
                                                       backend="torch")
    assert rel_error(out, expected) <= 2e-2
    # on the CPU these inputs (torch generator, not CUDA) select ~36% of blocks, ~31% tiles skipped
    assert stats["block_sparsity"] > 0.0 and stats["selected_block_fraction"] < 0.75, stats


@pytest.mark.parametrize("attention", [
    {"name": "hierarchical", "backend": "triton", "alpha": 1.5, "block_size": 64},
    {"name": "topk_blocks", "backend": "triton", "top_k": 4, "block_size": 64},
], ids=lambda a: a["name"])
def test_bf16_training_step_through_the_registry(attention):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=256, n_layer=2, n_head=4, n_kv_head=2, d_model=256, max_seq_len=1024,
                       attention=attention)
    model = GPT(config).cuda().train()
    idx = torch.randint(0, 256, (2, 1025), device="cuda")
    doc_ids = torch.repeat_interleave(torch.arange(2, device="cuda"), torch.tensor([400, 625], device="cuda"))
    doc_ids = doc_ids[None].expand(2, -1)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = model(idx[:, :-1], targets=idx[:, 1:], doc_ids=doc_ids[:, :-1])
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(math.log(256), rel=0.1)
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad
