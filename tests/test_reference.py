"""Tests of the exact PyTorch references in kernels/reference.py (CPU, float64 where it matters)."""

import math

import pytest
import torch

entmax_pkg = pytest.importorskip("entmax", reason="the `entmax` package is the oracle (pip install entmax)")

from kernels import reference as ref  # noqa: E402

ALPHAS = [1.5, 2.0, 1.25]


pytestmark = pytest.mark.usefixtures("single_thread")


def package_entmax(x, alpha, dim=-1):
    """The same map from the `entmax` package: the oracle."""
    if alpha == 1.5:
        return entmax_pkg.entmax15(x, dim=dim)
    if alpha == 2.0:
        return entmax_pkg.sparsemax(x, dim=dim)
    return entmax_pkg.entmax_bisect(x, alpha=alpha, dim=dim, n_iter=200)


def make_qkv(batch=2, heads=4, kv_heads=2, n_q=40, n_k=40, dim=8, dtype=torch.float64, seed=0, temp=2.0):
    gen = torch.Generator().manual_seed(seed)
    q = temp * torch.randn(batch, heads, n_q, dim, generator=gen, dtype=dtype)
    k = torch.randn(batch, kv_heads, n_k, dim, generator=gen, dtype=dtype)
    v = torch.randn(batch, kv_heads, n_k, dim, generator=gen, dtype=dtype)
    return q, k, v


def dense_attention(q, k, v, alpha, causal, scale=None, doc_ids=None):
    """Naive attention built from the `entmax` package, with k/v repeated per query head."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = scale * q @ k.transpose(-1, -2)
    n_q, n_k = scores.shape[-2:]
    allowed = torch.ones(n_q, n_k, dtype=torch.bool)
    if causal:
        allowed = torch.tril(allowed)
    allowed = allowed[None, None]
    if doc_ids is not None:
        allowed = allowed & (doc_ids[:, :, None] == doc_ids[:, None, :])[:, None]
    scores = scores.masked_fill(~allowed, float("-inf"))
    return package_entmax(scores, alpha) @ v


# --------------------------------------------------------------------------------------------
# entmax
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dim", [-1, 0])
def test_entmax_matches_package_values_and_grads(alpha, dim):
    gen = torch.Generator().manual_seed(1)
    x = (3 * torch.randn(9, 33, generator=gen, dtype=torch.float64)).requires_grad_()
    x_pkg = x.detach().clone().requires_grad_()
    upstream = torch.randn(9, 33, generator=gen, dtype=torch.float64)

    ours = ref.entmax(x, alpha=alpha, dim=dim)
    theirs = package_entmax(x_pkg, alpha, dim=dim)
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=0)
    (ours * upstream).sum().backward()
    (theirs * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_pkg.grad, atol=1e-10, rtol=0)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_entmax_gradcheck(alpha):
    gen = torch.Generator().manual_seed(2)
    # Well-separated values keep the support fixed under gradcheck's finite differences.
    x = torch.randperm(12, generator=gen).to(torch.float64).reshape(2, 6) * 0.37
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ref.entmax(t, alpha=alpha), (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_entmax_sums_to_one_and_is_sparse(alpha):
    gen = torch.Generator().manual_seed(3)
    x = 4 * torch.randn(16, 4096, generator=gen)
    p = ref.entmax(x, alpha=alpha)
    assert p.dtype == torch.float32
    torch.testing.assert_close(p.sum(-1), torch.ones(16), atol=1e-5, rtol=0)
    assert (p >= 0).all()
    assert (p == 0).float().mean() > 0.5


@pytest.mark.parametrize("alpha", ALPHAS)
def test_entmax_large_logits_finite_and_exact(alpha):
    gen = torch.Generator().manual_seed(4)
    x = 100 * torch.randn(8, 257, generator=gen, dtype=torch.float64)
    x[:, :3] = x[:, :1] + torch.tensor([0.0, -0.3, -0.9], dtype=torch.float64)  # a non-trivial support
    ours32 = ref.entmax(x.float(), alpha=alpha)
    oracle = package_entmax(x, alpha)
    assert torch.isfinite(ours32).all()
    torch.testing.assert_close(ours32.double(), oracle, atol=1e-6, rtol=0)
    torch.testing.assert_close(ref.entmax(x, alpha=alpha), oracle, atol=1e-12, rtol=0)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_entmax_minus_inf_entries_and_rows(alpha):
    x = torch.randn(3, 10, dtype=torch.float64)
    x[0, :4] = float("-inf")
    x[1] = float("-inf")
    x.requires_grad_()
    p = ref.entmax(x, alpha=alpha)
    assert (p[0, :4] == 0).all() and (p[1] == 0).all()
    torch.testing.assert_close(p[[0, 2]].sum(-1), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(p[0, 4:], package_entmax(x[0, 4:].detach(), alpha), atol=1e-12, rtol=0)
    p.backward(torch.randn_like(p))
    assert torch.isfinite(x.grad).all()
    assert (x.grad[0, :4] == 0).all() and (x.grad[1] == 0).all()


def test_entmax_low_precision_returns_input_dtype():
    x = torch.randn(4, 50).to(torch.bfloat16).requires_grad_()
    p = ref.entmax(x)
    assert p.dtype == torch.bfloat16
    p.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16


def test_entmax_errors():
    with pytest.raises(ValueError, match="alpha"):
        ref.entmax(torch.randn(3), alpha=1.0)
    with pytest.raises(ValueError, match="alpha"):
        ref.entmax(torch.randn(3), alpha=2.5)
    with pytest.raises(TypeError, match="alpha"):
        ref.entmax(torch.randn(3), alpha="1.5")
    with pytest.raises(TypeError, match="floating"):
        ref.entmax(torch.arange(3))


# --------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("causal,n_k", [(True, 40), (False, 40), (False, 23), (False, 1)])
def test_attention_matches_dense_oracle(alpha, causal, n_k):
    q, k, v = make_qkv(n_q=40 if causal or n_k != 1 else 1, n_k=n_k)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    oracle_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = ref.entmax_attention(*leaves, alpha=alpha, causal=causal, scale=0.7, chunk_size=16)
    expected = dense_attention(*oracle_leaves, alpha=alpha, causal=causal, scale=0.7)
    torch.testing.assert_close(out, expected, atol=1e-11, rtol=0)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    for ours, theirs in zip(leaves, oracle_leaves):
        torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-10, rtol=0)


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_attention_gradcheck(alpha):
    q, k, v = make_qkv(batch=1, heads=2, kv_heads=1, n_q=6, n_k=6, dim=4, seed=5, temp=1.0)
    inputs = tuple(t.requires_grad_() for t in (q, k, v))

    def attention(q_, k_, v_):
        return ref.entmax_attention(q_, k_, v_, alpha=alpha, causal=True, chunk_size=4)

    assert torch.autograd.gradcheck(attention, inputs, eps=1e-6, atol=1e-6)


def test_attention_gqa_equals_repeated_kv():
    q, k, v = make_qkv(heads=6, kv_heads=2)
    grouped = ref.entmax_attention(q, k, v)
    repeated = ref.entmax_attention(q, k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1))
    torch.testing.assert_close(grouped, repeated, atol=1e-13, rtol=0)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_doc_ids_equals_separate_documents(causal):
    q, k, v = make_qkv(batch=2, n_q=30, n_k=30)
    lengths = [[7, 15, 8], [30]]
    doc_ids = torch.stack(
        [torch.repeat_interleave(torch.arange(len(row)), torch.tensor(row)) for row in lengths]
    )
    packed = ref.entmax_attention(q, k, v, causal=causal, doc_ids=doc_ids, chunk_size=9)
    for b, row in enumerate(lengths):
        start = 0
        for length in row:
            piece = slice(start, start + length)
            alone = ref.entmax_attention(
                q[b : b + 1, :, piece], k[b : b + 1, :, piece], v[b : b + 1, :, piece], causal=causal
            )
            torch.testing.assert_close(packed[b : b + 1, :, piece], alone, atol=1e-13, rtol=0)
            start += length


@pytest.mark.parametrize("causal", [True, False])
def test_attention_chunking_matches_single_chunk(causal):
    q, k, v = make_qkv(n_q=70, n_k=70, seed=6)
    doc_ids = torch.tensor([[0] * 30 + [1] * 40, [0] * 70])
    results = []
    for chunk_size in (70, 1, 13, 64):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out, stats = ref.entmax_attention(
            *leaves, causal=causal, doc_ids=doc_ids, chunk_size=chunk_size, return_stats=True
        )
        out.pow(2).sum().backward()
        results.append((out.detach(), [t.grad for t in leaves], stats))
    first_out, first_grads, first_stats = results[0]
    for out, grads, stats in results[1:]:
        torch.testing.assert_close(out, first_out, atol=1e-13, rtol=0)
        for grad, first_grad in zip(grads, first_grads):
            torch.testing.assert_close(grad, first_grad, atol=1e-12, rtol=0)
        assert stats == pytest.approx(first_stats, abs=1e-12)


def test_attention_output_dtype_and_precision():
    q, k, v = make_qkv(dtype=torch.float32)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        out = ref.entmax_attention(q.to(dtype), k.to(dtype), v.to(dtype))
        assert out.dtype == dtype
    exact = ref.entmax_attention(q.double(), k.double(), v.double())
    torch.testing.assert_close(ref.entmax_attention(q, k, v).double(), exact, atol=1e-5, rtol=0)


@pytest.mark.parametrize("block", [(64, 64), (16, 32)])
def test_attention_stats_match_full_probabilities(block):
    block_m, block_n = block
    q, k, v = make_qkv(batch=2, heads=2, kv_heads=1, n_q=150, n_k=150, dim=16, dtype=torch.float32)
    # Rotating q and k by their position makes attention local, so far-off tiles are exactly zero.
    angle = 0.02 * torch.arange(150.0)
    q[..., :2] = 30 * torch.stack([angle.cos(), angle.sin()], dim=-1)
    k[..., :2] = torch.stack([angle.cos(), angle.sin()], dim=-1)
    doc_ids = torch.tensor([[0] * 100 + [1] * 50, [0] * 20 + [1] * 130])
    _, stats = ref.entmax_attention(
        q, k, v, doc_ids=doc_ids, chunk_size=50, return_stats=True, block_m=block_m, block_n=block_n
    )
    probs = ref.entmax_attention_probs(q, k, alpha=1.5, causal=True, doc_ids=doc_ids)
    allowed = ref.allowed_mask(150, 150, causal=True, doc_ids=doc_ids).expand_as(probs)
    expected_sparsity = ((probs == 0) & allowed).sum().item() / allowed.sum().item()
    assert stats["sparsity"] == pytest.approx(expected_sparsity, abs=1e-12)
    assert stats["block_sparsity"] == pytest.approx(
        ref.block_sparsity(probs, allowed, block_m=block_m, block_n=block_n), abs=1e-12
    )
    assert 0.0 < stats["block_sparsity"] < stats["sparsity"] < 1.0


def test_block_sparsity_counts_allowed_tiles_only():
    probs = torch.zeros(1, 1, 4, 4)
    probs[0, 0, 0, 0] = 1.0  # tile (0, 0) non-zero
    allowed = torch.tril(torch.ones(4, 4, dtype=torch.bool))  # tile (0, 1) holds no allowed entry
    # 2x2 tiles: (0,0) non-zero, (1,0) zero, (1,1) zero, (0,1) not allowed -> 2 of 3 zero.
    assert ref.block_sparsity(probs, allowed, block_m=2, block_n=2) == pytest.approx(2 / 3)
    assert ref.block_sparsity(probs != 0, None, block_m=2, block_n=2) == pytest.approx(3 / 4)
    # Ragged edges: a 3x3 grid with 2x2 tiles still has 4 tiles.
    assert ref.block_sparsity(probs[..., :3, :3], None, block_m=2, block_n=2) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="block_m"):
        ref.block_sparsity(probs, block_m=0)


def test_attention_probs_shape_and_rows():
    q, k, _ = make_qkv(n_q=12, n_k=12)
    probs = ref.entmax_attention_probs(q, k, alpha=1.5, causal=True)
    assert probs.shape == (2, 4, 12, 12)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 12, dtype=torch.float64))
    assert (probs.triu(1) == 0).all()


def test_attention_large_scores_finite():
    q, k, v = make_qkv(dtype=torch.float32, temp=100.0)
    out = ref.entmax_attention(q, k, v)
    assert torch.isfinite(out).all()
    exact = dense_attention(q.double(), k.double(), v.double(), 1.5, causal=True)
    torch.testing.assert_close(out.double(), exact, atol=1e-4, rtol=0)


def test_attention_errors():
    q, k, v = make_qkv()
    with pytest.raises(ValueError, match="q must have shape"):
        ref.entmax_attention(q[0], k, v)
    with pytest.raises(ValueError, match="multiple of k/v heads"):
        ref.entmax_attention(q[:, :3], k, v)
    with pytest.raises(ValueError, match="head dim"):
        ref.entmax_attention(q[..., :4], k, v)
    with pytest.raises(ValueError, match="alpha"):
        ref.entmax_attention(q, k, v, alpha=0.5)
    with pytest.raises(ValueError, match="causal=True"):
        ref.entmax_attention(q, k[:, :, :10], v[:, :, :10])
    with pytest.raises(ValueError, match="doc_ids must have shape"):
        ref.entmax_attention(q, k, v, doc_ids=torch.zeros(2, 39, dtype=torch.long))
    with pytest.raises(TypeError, match="doc_ids"):
        ref.entmax_attention(q, k, v, doc_ids=torch.zeros(2, 40))
    decreasing = torch.zeros(2, 40, dtype=torch.long)
    decreasing[:, 0] = 1
    with pytest.raises(ValueError, match="non-decreasing"):
        ref.entmax_attention(q, k, v, doc_ids=decreasing)
    with pytest.raises(ValueError, match="same shape"):
        ref.entmax_attention(q, k, v[:, :, :10])
    with pytest.raises(ValueError, match="chunk_size"):
        ref.entmax_attention(q, k, v, chunk_size=0)


def test_sampled_block_sparsity_equals_exact_when_every_tile_is_sampled():
    q, k, _ = make_qkv(batch=1, heads=2, kv_heads=1, n_q=200, n_k=200, dim=16, dtype=torch.float32)
    angle = 0.02 * torch.arange(200.0)
    q[..., :2] = 30 * torch.stack([angle.cos(), angle.sin()], dim=-1)
    k[..., :2] = torch.stack([angle.cos(), angle.sin()], dim=-1)
    for causal in (True, False):
        probs = ref.entmax_attention_probs(q, k, causal=causal)
        allowed = ref.allowed_mask(200, 200, causal=causal)
        exact = ref.block_sparsity(probs, allowed, block_m=32, block_n=32)
        sampled = ref.sampled_block_sparsity(q, k, causal=causal, n_row_tiles=7, block_m=32, block_n=32)
        assert exact > 0.2
        assert sampled == pytest.approx(exact, abs=1e-12)
    partial = ref.sampled_block_sparsity(q, k, n_row_tiles=3, block_m=32, block_n=32)
    assert 0.0 < partial < 1.0
