"""Hierarchical entmax attention and the top-k block baseline (kernels/hierarchical.py) on the CPU.

The exact PyTorch path is checked against an independent per-query loop and against finite
differences; the Triton path (Triton's CPU interpreter: TRITON_INTERPRET=1 is set here before
anything imports triton, unless CUDA is present) against the float64 reference, forward and q/k/v
gradients, with relative errors ||a - b|| / ||b|| that fail on any NaN. Shapes are tiny.
"""

import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import hierarchical, reference  # noqa: E402
from kernels.entmax_attention import is_interpreting  # noqa: E402

from helpers import rel_error

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON_RUNNABLE = torch.cuda.is_available() or is_interpreting()


@pytest.fixture
def triton_runnable():
    """Fails (never skips) when the kernels cannot run here, so a broken setup is not hidden."""
    if not TRITON_RUNNABLE:
        pytest.fail("kernels was imported before TRITON_INTERPRET=1 was set, so its Triton kernels cannot run "
                    "on this CPU machine: set TRITON_INTERPRET=1 in the environment or tests/conftest.py")


needs_triton = pytest.mark.usefixtures("triton_runnable")


def make_qkv(gen, batch, heads, kv_heads, seq_len, head_dim, *, q_scale=1.0, dtype=torch.float32, n_k=None):
    n_k = seq_len if n_k is None else n_k
    q = torch.randn(batch, heads, seq_len, head_dim, generator=gen, dtype=torch.float64) * q_scale
    k = torch.randn(batch, kv_heads, n_k, head_dim, generator=gen, dtype=torch.float64)
    v = torch.randn(batch, kv_heads, n_k, head_dim, generator=gen, dtype=torch.float64)
    return [t.to(DEVICE, dtype).requires_grad_() for t in (q, k, v)]


def block_structured_qkv(gen, batch, heads, kv_heads, seq_len, head_dim, block_size, *, sharpness):
    """Keys of each block share a random direction and every 64 consecutive queries point at one
    earlier block, so block scores differ sharply and most (64-row x block) tiles get zero weight:
    the kernel really skips tiles."""
    n_blocks = math.ceil(seq_len / block_size)
    directions = torch.randn(batch, kv_heads, n_blocks, head_dim, generator=gen, dtype=torch.float64)
    k = directions.repeat_interleave(block_size, dim=2)[:, :, :seq_len]
    k = k + 0.3 * torch.randn(k.shape, generator=gen, dtype=torch.float64)
    chunk = hierarchical.STATS_QUERY_TILE
    first_blocks = torch.arange(0, seq_len, chunk) // block_size
    targets = (torch.rand(batch, heads, len(first_blocks), generator=gen) * first_blocks.clamp(min=1)).long()
    targets = targets.repeat_interleave(chunk, dim=2)[:, :, :seq_len]
    group = heads // kv_heads
    q = torch.gather(directions.repeat_interleave(group, dim=1), 2,
                     targets[..., None].expand(-1, -1, -1, head_dim)) * sharpness
    v = torch.randn(batch, kv_heads, seq_len, head_dim, generator=gen, dtype=torch.float64)
    return [t.to(DEVICE, torch.float32).requires_grad_() for t in (q, k, v)]


def random_doc_ids(gen, batch, seq_len):
    """Non-decreasing ids: documents of random lengths, one cut mid-sequence, a one-token document."""
    rows = []
    for _ in range(batch):
        starts = torch.zeros(seq_len, dtype=torch.int64)
        starts[torch.randperm(seq_len - 1, generator=gen)[: max(1, seq_len // 15)] + 1] = 1
        starts[seq_len // 2] = 1
        starts[seq_len - 1] = 1
        rows.append(torch.cumsum(starts, 0) + 3)
    return torch.stack(rows).to(DEVICE)


def run_with_grads(fn, q, k, v, grad_seed, **kwargs):
    """fn's output, stats and (dq, dk, dv) for a fixed random output gradient."""
    out, stats = fn(q, k, v, return_stats=True, **kwargs)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    grads = torch.autograd.grad(out, (q, k, v), grad_out.to(out.device, out.dtype))
    return out, stats, grads


def float64_copies(*tensors):
    return [t.detach().double().requires_grad_() for t in tensors]


# ----------------------------------------------------------------------------------------------
# the exact reference
# ----------------------------------------------------------------------------------------------


def per_query_loop(q, k, v, *, alpha, block_size, causal, doc_ids):
    """The method written out query by query in float64, independent of the vectorised code."""
    batch, heads, n_q, head_dim = q.shape
    n_k, group = k.shape[2], heads // k.shape[1]
    scale = 1.0 / math.sqrt(head_dim)
    out = torch.zeros(batch, heads, n_q, head_dim, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            keys, values = k[b, h // group].double(), v[b, h // group].double()
            for i in range(n_q):
                position = n_k - n_q + i
                same_doc = [j for j in range(n_k) if doc_ids is None or doc_ids[b, j] == doc_ids[b, position]]
                own_block = position // block_size
                distant, block_scores = [], []
                for block in range(math.ceil(n_k / block_size)):
                    members = [j for j in same_doc if j // block_size == block]
                    if members and block != own_block and (not causal or block < own_block):
                        distant.append(block)
                        block_scores.append(scale * q[b, h, i].double() @ keys[members].mean(0))
                prior = {own_block: 1.0}
                if distant:
                    weights = reference.entmax(torch.stack(block_scores), alpha=alpha)
                    prior.update({blk: (w / weights.max()).item() for blk, w in zip(distant, weights) if w > 0})
                seen = [j for j in same_doc if j // block_size in prior and (not causal or j <= position)]
                logits = torch.stack([scale * q[b, h, i].double() @ keys[j] + math.log(prior[j // block_size])
                                      for j in seen])
                out[b, h, i] = torch.softmax(logits, 0) @ values[seen]
    return out


@pytest.mark.parametrize("alpha,causal,packed,kv_heads,seq_len,block_size", [
    (1.5, True, False, 2, 45, 8),
    (2.0, True, True, 1, 45, 8),
    (1.5, False, True, 2, 37, 8),
    (2.0, False, False, 1, 40, 16),
    (1.25, True, True, 2, 33, 4),
])
def test_reference_equals_per_query_loop(gen, alpha, causal, packed, kv_heads, seq_len, block_size):
    q, k, v = make_qkv(gen, 2, 2, kv_heads, seq_len, 8, q_scale=3.0, dtype=torch.float64)
    doc_ids = random_doc_ids(gen, 2, seq_len) if packed else None
    with torch.no_grad():
        out = hierarchical.hierarchical_attention(q, k, v, alpha=alpha, block_size=block_size, causal=causal,
                                                  doc_ids=doc_ids, backend="torch")
    expected = per_query_loop(q, k, v, alpha=alpha, block_size=block_size, causal=causal, doc_ids=doc_ids)
    assert rel_error(out, expected) < 1e-12


def test_decode_rows_equal_the_last_causal_rows(gen):
    q, k, v = make_qkv(gen, 1, 4, 2, 30, 8, q_scale=3.0, dtype=torch.float64)
    with torch.no_grad():
        full = hierarchical.hierarchical_attention(q, k, v, block_size=8, causal=True, backend="torch")
        for length in (1, 8, 9, 30):
            step = hierarchical.hierarchical_attention(q[:, :, length - 1:length], k[:, :, :length],
                                                       v[:, :, :length], block_size=8, causal=False,
                                                       backend="torch")
            assert rel_error(step, full[:, :, length - 1:length]) < 1e-12


@pytest.mark.parametrize("alpha", [1.5, 2.0])
@pytest.mark.parametrize("packed", [False, True])
def test_reference_gradients_equal_finite_differences(gen, alpha, packed):
    q, k, v = make_qkv(gen, 1, 2, 1, 26, 4, q_scale=3.0, dtype=torch.float64)
    doc_ids = random_doc_ids(gen, 1, 26) if packed else None

    def attend(q, k, v):
        return hierarchical.hierarchical_attention(q, k, v, alpha=alpha, block_size=4, doc_ids=doc_ids,
                                                   backend="torch")

    # fast_mode compares random directional derivatives: the full Jacobian would take a minute
    assert torch.autograd.gradcheck(attend, (q, k, v), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_gradients_reach_k_through_the_block_summaries(gen):
    """With the token scores cut off from k, k still learns: through the pooled summaries."""
    q, k, v = make_qkv(gen, 1, 2, 1, 24, 4, q_scale=3.0, dtype=torch.float64)
    token_keys = k.detach().clone()

    def through_summaries_only(summary_keys):
        scores, layout = hierarchical.block_scores(q, summary_keys, block_size=4)
        bias, _ = hierarchical.entmax_block_bias(scores, layout, alpha=1.5)
        return hierarchical.block_attention_reference(q, token_keys, v, bias, block_size=4)

    (grad_k,) = torch.autograd.grad(through_summaries_only(k).square().sum(), (k,))
    assert grad_k.abs().max() > 1e-3
    assert torch.autograd.gradcheck(through_summaries_only, (k,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_topk_gets_no_gradient_through_the_selection(gen):
    q, k, v = make_qkv(gen, 1, 2, 1, 24, 4, q_scale=3.0, dtype=torch.float64)
    scores, layout = hierarchical.block_scores(q, k, block_size=4)
    bias = hierarchical.topk_block_bias(scores, layout, top_k=2)
    assert not bias.requires_grad


def equal_block_means_qkv(gen, seq_len, block_size):
    """Keys whose every block has the same mean: all block scores tie, entmax weights are uniform."""
    q, k, v = make_qkv(gen, 1, 4, 2, seq_len, 8, q_scale=2.0, dtype=torch.float64)
    blocks = k.detach().reshape(1, 2, seq_len // block_size, block_size, 8)
    common = torch.randn(1, 2, 1, 1, 8, generator=gen, dtype=torch.float64)
    k = (blocks - blocks.mean(dim=3, keepdim=True) + common).reshape(1, 2, seq_len, 8)
    return q, k.requires_grad_(), v


def dense_softmax(q, k, v, causal, doc_ids=None):
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1).double(), v.repeat_interleave(group, 1).double()
    logits = q.double() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    mask = reference.allowed_mask(q.shape[2], k.shape[2], causal=causal, doc_ids=doc_ids, device=q.device)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, -1) @ v


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_all_blocks_with_uniform_weights_is_softmax_attention(gen, causal, alpha):
    q, k, v = equal_block_means_qkv(gen, 32, 8)
    out, stats = hierarchical.hierarchical_attention(q, k, v, alpha=alpha, block_size=8, causal=causal,
                                                     backend="torch", return_stats=True)
    assert stats["selected_block_fraction"] == 1.0
    assert rel_error(out, dense_softmax(q, k, v, causal)) < 1e-12


@pytest.mark.parametrize("causal,packed", [(True, False), (True, True), (False, False)])
def test_topk_with_every_block_is_softmax_attention(gen, causal, packed):
    q, k, v = make_qkv(gen, 2, 4, 2, 37, 8, q_scale=3.0, dtype=torch.float64)
    doc_ids = random_doc_ids(gen, 2, 37) if packed else None
    out, stats = hierarchical.topk_block_attention(q, k, v, top_k=5, block_size=8, causal=causal, doc_ids=doc_ids,
                                                   backend="torch", return_stats=True)
    assert stats["selected_block_fraction"] == 1.0 and stats["block_sparsity"] == 0.0
    assert rel_error(out, dense_softmax(q, k, v, causal, doc_ids)) < 1e-12


def test_topk_keeps_exactly_k_distant_blocks_plus_the_local_one(gen):
    q, k, v = make_qkv(gen, 1, 2, 1, 64, 8, q_scale=3.0, dtype=torch.float64)
    scores, layout = hierarchical.block_scores(q, k, block_size=8)
    bias = hierarchical.topk_block_bias(scores, layout, top_k=3)
    n_candidates = layout.candidate.expand_as(bias).sum(-1)
    n_selected = (bias > float("-inf")).sum(-1)
    assert torch.equal(n_selected, n_candidates.clamp(max=3) + 1)
    assert bool((bias[layout.local.expand_as(bias)] == 0).all())


@pytest.mark.parametrize("name", ["hierarchical", "topk"])
def test_packed_documents_do_not_see_each_other(gen, name):
    """Changing one document's keys and values leaves every other document's output unchanged,
    block summaries included (a block cut by a document boundary is pooled per document)."""
    q, k, v = make_qkv(gen, 1, 2, 1, 40, 8, q_scale=3.0, dtype=torch.float64)
    doc_ids = torch.tensor([[0] * 13 + [1] * 19 + [2] * 8])
    attend = (hierarchical.hierarchical_attention if name == "hierarchical"
              else lambda *a, **kw: hierarchical.topk_block_attention(*a, top_k=1, **kw))
    with torch.no_grad():
        before = attend(q, k, v, block_size=8, doc_ids=doc_ids, backend="torch")
        k2, v2 = k.clone(), v.clone()
        k2[:, :, 13:32] += 5 * torch.randn(1, 1, 19, 8, generator=gen, dtype=torch.float64)
        v2[:, :, 13:32] += 1.0
        after = attend(q, k2, v2, block_size=8, doc_ids=doc_ids, backend="torch")
    others = doc_ids[0] != 1
    assert torch.equal(before[:, :, others], after[:, :, others])
    assert not torch.allclose(before[:, :, ~others], after[:, :, ~others])


def test_block_aligned_document_equals_a_separate_run(gen):
    q, k, v = make_qkv(gen, 1, 2, 1, 40, 8, q_scale=3.0, dtype=torch.float64)
    doc_ids = torch.tensor([[0] * 16 + [1] * 24])
    with torch.no_grad():
        packed = hierarchical.hierarchical_attention(q, k, v, block_size=8, doc_ids=doc_ids, backend="torch")
        second = hierarchical.hierarchical_attention(q[:, :, 16:], k[:, :, 16:], v[:, :, 16:], block_size=8,
                                                     backend="torch")
    assert rel_error(packed[:, :, 16:], second) < 1e-12


def test_stats_are_fractions_and_count_blocks(gen):
    q, k, v = block_structured_qkv(gen, 1, 2, 1, 96, 16, 16, sharpness=3.0)
    _, stats = hierarchical.hierarchical_attention(q, k, v, block_size=16, backend="torch", return_stats=True)
    assert set(stats) == {"selected_block_fraction", "blocks_per_query", "block_sparsity"}
    assert 0.0 < stats["selected_block_fraction"] < 1.0
    assert 0.0 <= stats["block_sparsity"] <= 1.0
    assert 1.0 <= stats["blocks_per_query"] <= 6.0


def test_mixed_precision_does_not_round_the_block_level(gen):
    """Under autocast the block scores and the reference stay in float32 (entmax thresholds and
    the exactness of the reference depend on them)."""
    q, k, v = make_qkv(gen, 1, 2, 1, 40, 16, q_scale=3.0)
    expected = hierarchical.hierarchical_attention(q, k, v, block_size=8, backend="torch")
    with torch.autocast(device_type=DEVICE, dtype=torch.bfloat16):
        out = hierarchical.hierarchical_attention(q, k, v, block_size=8, backend="torch")
    assert out.dtype == torch.float32 and torch.equal(out, expected)


def test_bad_arguments_raise_clear_errors(gen):
    q, k, v = make_qkv(gen, 1, 2, 1, 20, 16)
    with pytest.raises(ValueError, match="alpha"):
        hierarchical.hierarchical_attention(q, k, v, alpha=1.0, backend="torch")
    with pytest.raises(ValueError, match="backend"):
        hierarchical.hierarchical_attention(q, k, v, backend="cuda")
    with pytest.raises(ValueError, match="block_size"):
        hierarchical.hierarchical_attention(q, k, v, block_size=0, backend="torch")
    with pytest.raises(ValueError, match="top_k"):
        hierarchical.topk_block_attention(q, k, v, top_k=0, backend="torch")
    with pytest.raises(ValueError, match="non-decreasing"):
        hierarchical.hierarchical_attention(q, k, v, doc_ids=torch.arange(20).flip(0)[None], backend="torch")
    with pytest.raises(ValueError, match="causal=False"):
        hierarchical.hierarchical_attention(q[:, :, :1], k, v, causal=True, backend="torch")


# ----------------------------------------------------------------------------------------------
# the Triton kernel against the reference
# ----------------------------------------------------------------------------------------------


def triton_and_reference(fn, q, k, v, grad_seed, **kwargs):
    result = run_with_grads(fn, q, k, v, grad_seed, backend="triton", **kwargs)
    expected = run_with_grads(fn, *float64_copies(q, k, v), grad_seed, backend="torch", **kwargs)
    return result, expected


def assert_close(result, expected, *, fwd_tol=1e-5, grad_tol=1e-4):
    (out, stats, grads), (ref_out, ref_stats, ref_grads) = result, expected
    errors = {"out": rel_error(out, ref_out)}
    errors.update({name: rel_error(g, r) for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads)})
    assert errors["out"] <= fwd_tol, errors
    assert max(errors["dq"], errors["dk"], errors["dv"]) <= grad_tol, errors
    assert stats == ref_stats


# (alpha, causal, packed, heads, kv_heads, seq_len, head_dim, block_size, block_m)
TRITON_CASES = [
    (1.5, True, False, 2, 2, 45, 16, 16, 16),    # N not a multiple of the block
    (2.0, True, False, 4, 1, 64, 16, 16, 32),    # GQA 4, query tile spanning two blocks
    (1.5, False, False, 2, 1, 50, 32, 16, 16),
    (2.0, False, True, 2, 2, 48, 16, 16, 16),
    (1.5, True, True, 4, 2, 70, 16, 32, 16),     # blocks of 32, packed documents
]


@needs_triton
@pytest.mark.parametrize("alpha,causal,packed,heads,kv_heads,seq_len,head_dim,block_size,block_m", TRITON_CASES)
def test_triton_matches_reference(gen, alpha, causal, packed, heads, kv_heads, seq_len, head_dim, block_size,
                                  block_m):
    q, k, v = make_qkv(gen, 2, heads, kv_heads, seq_len, head_dim, q_scale=3.0)
    doc_ids = random_doc_ids(gen, 2, seq_len) if packed else None
    result, expected = triton_and_reference(hierarchical.hierarchical_attention, q, k, v, grad_seed=seq_len,
                                            alpha=alpha, causal=causal, doc_ids=doc_ids, block_size=block_size,
                                            block_m=block_m)
    assert_close(result, expected)


@needs_triton
@pytest.mark.parametrize("alpha,causal", [(1.5, True), (2.0, False)])
def test_triton_matches_reference_when_most_blocks_are_skipped(gen, alpha, causal):
    q, k, v = block_structured_qkv(gen, 1, 2, 1, 256, 16, 16, sharpness=4.0)
    result, expected = triton_and_reference(hierarchical.hierarchical_attention, q, k, v, grad_seed=1,
                                            alpha=alpha, causal=causal, block_size=16)
    assert result[1]["block_sparsity"] > 0.3, result[1]
    assert_close(result, expected)


@needs_triton
@pytest.mark.parametrize("causal,packed", [(True, True), (False, False)])
def test_triton_topk_matches_reference(gen, causal, packed):
    q, k, v = make_qkv(gen, 1, 4, 2, 96, 16, q_scale=3.0)
    doc_ids = torch.tensor([[0] * 20 + [1] * 76], device=DEVICE) if packed else None
    result, expected = triton_and_reference(hierarchical.topk_block_attention, q, k, v, grad_seed=2, top_k=1,
                                            causal=causal, doc_ids=doc_ids, block_size=16)
    assert result[1]["selected_block_fraction"] < 1.0
    assert_close(result, expected)


@needs_triton
def test_triton_bias_gradient_matches_reference(gen):
    """The kernel alone, with a given prior: random biases, a third of the blocks switched off."""
    q, k, v = make_qkv(gen, 1, 2, 1, 40, 16, q_scale=2.0)
    n_blocks = 3
    bias = torch.randn(1, 2, 40, n_blocks, generator=gen, dtype=torch.float64)
    bias = bias.masked_fill(torch.rand(bias.shape, generator=gen, dtype=torch.float64) < 0.33, float("-inf"))
    own_block = torch.arange(40) // 16
    bias[..., torch.arange(40), own_block] = 0.0  # every query keeps its own block
    bias = bias.to(DEVICE, torch.float32).requires_grad_()
    grad_out = torch.randn(1, 2, 40, 16, generator=gen).to(DEVICE)

    out = hierarchical.block_attention(q, k, v, bias, block_size=16, block_m=16)
    grads = torch.autograd.grad(out, (q, k, v, bias), grad_out)
    q64, k64, v64, bias64 = float64_copies(q, k, v, bias)
    ref = hierarchical.block_attention_reference(q64, k64, v64, bias64, block_size=16)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64, bias64), grad_out.double())
    assert rel_error(out, ref) < 1e-5
    for grad, ref_grad in zip(grads, ref_grads):
        assert rel_error(grad, ref_grad) < 1e-4


@needs_triton
def test_triton_writes_every_output_element(gen, poisoned_empty):
    """Buffers start as NaN (ints as garbage): anything the kernels leave unwritten shows up."""
    q, k, v = make_qkv(gen, 1, 2, 1, 50, 16, q_scale=3.0)
    result, expected = triton_and_reference(hierarchical.hierarchical_attention, q, k, v, grad_seed=3,
                                            block_size=16, doc_ids=random_doc_ids(gen, 1, 50))
    assert_close(result, expected)


@needs_triton
def test_triton_bfloat16_is_close_to_reference(gen):
    q, k, v = make_qkv(gen, 1, 2, 1, 40, 16, q_scale=2.0, dtype=torch.bfloat16)
    result, expected = triton_and_reference(hierarchical.hierarchical_attention, q, k, v, grad_seed=4,
                                            block_size=16)
    assert_close(result, expected, fwd_tol=2e-2, grad_tol=5e-2)


def test_nan_never_passes_the_comparison():
    expected = torch.ones(3)
    with pytest.raises(AssertionError, match="non-finite"):
        rel_error(torch.tensor([1.0, float("nan"), 1.0]), expected)
    with pytest.raises(AssertionError, match="non-finite"):
        rel_error(expected, torch.tensor([1.0, float("inf"), 1.0]))


@needs_triton
def test_triton_rejects_what_it_cannot_run(gen):
    q, k, v = make_qkv(gen, 1, 2, 1, 20, 16)
    with pytest.raises(ValueError, match="block_size"):
        hierarchical.hierarchical_attention(q, k, v, block_size=24, backend="triton")
    with pytest.raises(ValueError, match="head_dim"):
        hierarchical.hierarchical_attention(q[..., :8], k[..., :8], v[..., :8], block_size=16, backend="triton")
    with pytest.raises(TypeError, match="float64"):
        hierarchical.hierarchical_attention(*float64_copies(q, k, v), block_size=16, backend="triton")
    with pytest.raises(ValueError, match="Nq == Nk"):
        hierarchical.hierarchical_attention(q[:, :, :1], k, v, causal=False, block_size=16, backend="triton")
