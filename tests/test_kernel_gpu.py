"""The Triton entmax attention kernels at realistic sizes on a CUDA GPU (skipped without one).

Forward and gradients against the exact reference (float32 on the GPU from the same bf16
inputs) at a few thousand tokens; forward alone up to 32k tokens on sampled query rows; and
agreement with the `adasplash` package (alpha = 1.5, causal) when it is importable.
"""

import math

import pytest
import torch

from helpers import rel_error

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

if torch.cuda.is_available():
    import kernels
    from kernels import reference


def rope_qkv(batch, heads, kv_heads, seq_len, head_dim, *, temperature, seed, dtype=torch.bfloat16):
    """RoPE-structured q/k (a shared direction per head plus noise, rotated by position), so that
    attention decays with distance and tiles far from the diagonal are zero, as in trained models."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=gen, device="cuda")  # noqa: E731
    direction = randn(1, kv_heads, 1, head_dim)
    group = heads // kv_heads
    q = direction.repeat_interleave(group, dim=1) + 0.5 * randn(batch, heads, seq_len, head_dim)
    k = direction + 0.5 * randn(batch, kv_heads, seq_len, head_dim)
    q = q / q.norm(dim=-1, keepdim=True) * math.sqrt(head_dim) * temperature
    k = k / k.norm(dim=-1, keepdim=True) * math.sqrt(head_dim)
    half = head_dim // 2
    inv_freq = 10000.0 ** (-torch.arange(half, device="cuda") / half)
    angles = torch.arange(seq_len, device="cuda")[:, None] * inv_freq[None, :]
    cos, sin = angles.cos(), angles.sin()

    def rotate(x):
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    v = randn(batch, kv_heads, seq_len, head_dim)
    return [t.to(dtype).contiguous() for t in (rotate(q), rotate(k), v)]


@pytest.mark.parametrize("alpha,causal,kv_heads,head_dim,with_docs", [
    (1.5, True, 4, 64, False),
    (1.5, True, 2, 128, False),
    (2.0, False, 2, 64, False),
    (1.25, True, 4, 64, False),
    (1.5, True, 4, 64, True),
])
def test_forward_and_gradients_match_reference(alpha, causal, kv_heads, head_dim, with_docs):
    seq_len, heads = 2048, 4
    q, k, v = rope_qkv(1, heads, kv_heads, seq_len, head_dim, temperature=0.4, seed=1)
    doc_ids = None
    if with_docs:
        doc_ids = torch.repeat_interleave(torch.arange(5, device="cuda"),
                                          torch.tensor([300, 1, 700, 47, 1000], device="cuda"))[None]
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out, stats = kernels.entmax_attention(q, k, v, alpha=alpha, causal=causal, doc_ids=doc_ids, return_stats=True)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)

    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref_out, ref_stats = reference.entmax_attention(q32, k32, v32, alpha=alpha, causal=causal, doc_ids=doc_ids,
                                                    return_stats=True, block_m=stats["block_m"],
                                                    block_n=stats["block_n"])
    ref_grads = torch.autograd.grad(ref_out, (q32, k32, v32), grad_out.float())
    errors = {"out": rel_error(out, ref_out)}
    errors.update({name: rel_error(grad, ref_grad) for name, grad, ref_grad in zip(("dq", "dk", "dv"), grads, ref_grads)})
    assert errors["out"] <= 2e-2, errors
    assert max(errors.values()) <= 3e-2, errors
    sparsities = (stats["block_sparsity"], ref_stats["block_sparsity"])
    if alpha in (1.5, 2.0) and not with_docs:
        assert stats["block_sparsity"] > 0.3, sparsities
    # Tiles whose only entries sit at the support's edge may flip between fp32 and the kernel's
    # arithmetic; their probabilities are ~0 either way.
    assert stats["block_sparsity"] == pytest.approx(ref_stats["block_sparsity"], abs=0.03), sparsities


@pytest.mark.parametrize("dtype,head_dim", [(torch.float32, 64), (torch.float32, 128),
                                            (torch.float16, 64), (torch.float16, 128)])
def test_other_dtypes_match_float64_reference(dtype, head_dim):
    """fp32 and fp16 inputs through the compiled paths that bf16 does not take: fp32 has exact
    (ieee) products, other shared-memory stages, and at head dim 128 four-byte rows through the
    tensor descriptors (_load_head_tile). A length that ends mid-tile; every Σp checked per row."""
    seq_len, heads, kv_heads = 1000, 4, 2
    q, k, v = rope_qkv(1, heads, kv_heads, seq_len, head_dim, temperature=0.4, seed=head_dim, dtype=dtype)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = kernels.entmax_attention(q, k, v, alpha=1.5, causal=True)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref_out = reference.entmax_attention(q64, k64, v64, alpha=1.5, causal=True)
    ref_grads = torch.autograd.grad(ref_out, (q64, k64, v64), grad_out.double())
    errors = {"out": rel_error(out, ref_out)}
    errors.update({name: rel_error(grad, ref_grad) for name, grad, ref_grad in zip(("dq", "dk", "dv"), grads, ref_grads)})
    tolerance = 1e-4 if dtype == torch.float32 else 5e-3
    assert all(math.isfinite(e) for e in errors.values()) and max(errors.values()) <= tolerance, errors
    with torch.no_grad():
        ones = torch.ones_like(v)
        row_sums = kernels.entmax_attention(q, k, ones, alpha=1.5, causal=True).double()
    assert (row_sums - 1).abs().max().item() <= (1e-5 if dtype == torch.float32 else 1e-3)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_forward_and_backward_launch_only_their_kernels(head_dim):
    """Every launch costs a node in a CUDA graph and host time per call: one forward+backward is
    exactly the two forward launches, the key-tile lists and the two backward kernels, with no fill
    kernels (the tile mask is written whole by the output launch, the doc-id placeholder is never
    read, the counts get no materialized zero gradients)."""
    from torch.profiler import ProfilerActivity, profile

    q, k, v = rope_qkv(1, 4, 4, 2048, head_dim, temperature=0.4, seed=5)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    grad_out = torch.randn_like(q)

    def call():
        return torch.autograd.grad(kernels.entmax_attention(q, k, v), (q, k, v), grad_out)

    call()  # compiles
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    launches = sorted((e.key, e.count) for e in prof.key_averages() if e.self_device_time_total > 0)
    assert launches == [("_entmax_attention_bwd_dkdv_kernel", 1), ("_entmax_attention_bwd_dq_kernel", 1),
                        ("_entmax_attention_output_kernel", 1), ("_entmax_attention_tau_kernel", 1),
                        ("_key_tile_lists_kernel", 1)], launches


@pytest.mark.parametrize("seq_len,head_dim", [(8192, 64), (8192, 128), (32768, 64), (32768, 128)])
def test_long_forward_on_sampled_rows(seq_len, head_dim):
    heads = 2
    temperature = 0.4 if head_dim == 64 else 0.2
    q, k, v = rope_qkv(1, heads, heads, seq_len, head_dim, temperature=temperature, seed=seq_len + head_dim)
    with torch.no_grad():
        out, stats = kernels.entmax_attention(q, k, v, alpha=1.5, causal=True, return_stats=True)
        rows = torch.cat([torch.arange(0, 64), torch.arange(seq_len // 2, seq_len // 2 + 64),
                          torch.arange(seq_len - 128, seq_len)]).cuda()
        scores = (q[:, :, rows].float() @ k.float().transpose(-1, -2)) / math.sqrt(head_dim)
        scores = scores.masked_fill(torch.arange(seq_len, device="cuda")[None, :] > rows[:, None], float("-inf"))
        probs = reference.entmax(scores, alpha=1.5)
        expected = probs @ v.float()
    assert rel_error(out[:, :, rows], expected) <= 2e-2
    assert 0.0 < stats["block_sparsity"] < 1.0


def test_probabilities_sum_to_one_at_32k():
    """sum_j p_ij at the kernel's tau on sampled rows, bf16 inputs, 32k tokens."""
    import importlib
    attention_module = importlib.import_module("kernels.entmax_attention")
    seq_len, head_dim = 32768, 64
    q, k, v = rope_qkv(1, 2, 2, seq_len, head_dim, temperature=0.4, seed=7)
    config = attention_module._LaunchConfig(alpha=1.5, causal=True, scale=head_dim ** -0.5, n_iter=2, block_m=64,
                                            block_n=64, num_warps=4, num_stages=2)
    placeholder = torch.zeros(1, dtype=torch.int32, device="cuda")
    with torch.no_grad():
        _, _, tau, *_ = attention_module._forward(q, k, v, placeholder, None, None, config)
        rows = torch.arange(0, seq_len, 997, device="cuda")
        z = config.z_scale * (q[:, :, rows].float() @ k.float().transpose(-1, -2))
        z = z.masked_fill(torch.arange(seq_len, device="cuda")[None, :] > rows[:, None], float("-inf"))
        mass = ((z - tau.view(1, 2, seq_len)[:, :, rows, None]).clamp_min(0) ** 2).sum(-1)
    assert (mass - 1).abs().max().item() <= 1e-3


@pytest.mark.parametrize("heads,kv_heads,head_dim", [(5, 5, 128), (6, 2, 64)])
def test_launch_head_groups_change_only_the_order(monkeypatch, heads, kv_heads, head_dim):
    """The query-tile launches run their heads in groups (_launch_head_group: L2-sized, so only
    long sequences form several groups). Each program's arithmetic is its own, so any grouping,
    short last groups included, gives the same output and gradients bit for bit as one group of
    all heads, which the reference tests check."""
    import importlib
    attention_module = importlib.import_module("kernels.entmax_attention")
    q, k, v = rope_qkv(1, heads, kv_heads, 4096, head_dim, temperature=0.4, seed=11)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    grad_out = torch.randn_like(q)

    def run(head_group):
        monkeypatch.setattr(attention_module, "_launch_head_group", lambda q, k, **launch: head_group)
        out = kernels.entmax_attention(q, k, v, alpha=1.5, causal=True)
        return (out, *torch.autograd.grad(out, (q, k, v), grad_out))

    one_group = run(heads)
    assert all(torch.isfinite(t).all() for t in one_group)
    for head_group in (1, 4):
        for name, got, want in zip(("out", "dq", "dk", "dv"), run(head_group), one_group):
            assert torch.equal(got, want), (head_group, name)


def test_agrees_with_adasplash_package():
    adasplash = pytest.importorskip("adasplash")
    q, k, v = rope_qkv(1, 4, 4, 4096, 64, temperature=0.4, seed=3)
    with torch.no_grad():
        ours = kernels.entmax_attention(q, k, v, alpha=1.5, causal=True)
        theirs = adasplash.adasplash(q, k, v, alpha=1.5, is_causal=True)
    assert rel_error(ours, theirs) <= 2e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim, stages, max_spill_bytes", [(64, 3, 0), (128, 2, 64)])
def test_threshold_launch_register_cap_holds(head_dim, stages, max_spill_bytes, dtype):
    """At alpha 1.5 the threshold launch is compiled with the register cap, so that four programs
    share a multiprocessor: at head dim 64 (fused final pass, 3 stages) without spilling; at head
    dim 128 (2 stages) with four programs' shared memory within 228 KiB and at most a small spill
    (offline, Triton 3.6: 8 bytes). Every capped build this process holds is checked, and an fp32
    call is built here too, so an fp32 launch given the cap (such builds spilled 796 and 1436
    bytes) fails it."""
    import importlib
    attention_module = importlib.import_module("kernels.entmax_attention")
    cap = attention_module._TAU_LAUNCH_MAX_REGISTERS
    with torch.no_grad():
        for call_dtype in (dtype, torch.float32):
            q, k, v = rope_qkv(1, 2, 2, 1024, head_dim, temperature=0.4, seed=11, dtype=call_dtype)
            kernels.entmax_attention(q, k, v, alpha=1.5, causal=True)
    caches = attention_module._entmax_attention_tau_kernel.device_caches.values()
    compiled = [kernel for entry in caches for kernel in (entry[0] if isinstance(entry, tuple) else entry).values()
                if getattr(kernel.metadata, "maxnreg", None) == cap and kernel.metadata.num_stages == stages]
    assert compiled, "no threshold launch was compiled with the register cap"
    for kernel in compiled:
        assert kernel.n_regs <= cap and kernel.n_spills <= max_spill_bytes, (kernel.n_regs, kernel.n_spills)
        assert 4 * (kernel.metadata.shared + 1024) <= 228 * 1024, kernel.metadata.shared
