"""The fused Triton alpha-entmax attention (kernels.entmax_attention) against the exact reference.

Runs on CUDA when present, otherwise in Triton's CPU interpreter (TRITON_INTERPRET=1, which must
be set before anything imports triton: tests/conftest.py or the environment; this module sets it
too when it is imported first). Shapes are tiny so the interpreter stays fast. Every test draws
its own random inputs (seeded from the test id, so failures reproduce) and compares in float64
with relative errors ||a - b|| / ||b||; a NaN anywhere fails.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib  # noqa: E402

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import kernels  # noqa: E402
from kernels import _tau, reference  # noqa: E402

from helpers import exact_threshold, rel_error  # noqa: E402

pytestmark = pytest.mark.usefixtures("kernels_runnable")

attention_module = importlib.import_module("kernels.entmax_attention")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REPO_ROOT = Path(__file__).resolve().parents[1]


def make_qkv(gen, batch, heads, kv_heads, seq_len, head_dim, *, q_scale=1.0, dtype=torch.float32):
    q = torch.randn(batch, heads, seq_len, head_dim, generator=gen) * q_scale
    k = torch.randn(batch, kv_heads, seq_len, head_dim, generator=gen)
    v = torch.randn(batch, kv_heads, seq_len, head_dim, generator=gen)
    return [t.to(DEVICE, dtype).requires_grad_() for t in (q, k, v)]


def local_qkv(gen, batch, heads, seq_len, head_dim, *, sharpness):
    """q, k whose scores peak near the diagonal (a sum of cosines of the position gap, like RoPE
    on aligned vectors), so that tiles far from it are all-zero: realistic block sparsity."""
    positions = torch.arange(seq_len, dtype=torch.float64)[:, None]
    frequencies = torch.logspace(0, -1.5, head_dim // 2, dtype=torch.float64)[None, :]
    angles = positions * frequencies
    features = torch.cat([angles.cos(), angles.sin()], dim=-1) / (head_dim // 2) ** 0.5
    noise = lambda: 0.02 * torch.randn(batch, heads, seq_len, head_dim, generator=gen, dtype=torch.float64)
    q = (features + noise()) * sharpness * head_dim ** 0.5
    k = features + noise()
    v = torch.randn(batch, heads, seq_len, head_dim, generator=gen, dtype=torch.float64)
    return [t.to(DEVICE, torch.float32).requires_grad_() for t in (q, k, v)]


def random_doc_ids(gen, batch, seq_len):
    """Non-decreasing ids with documents of random lengths (some of one token)."""
    rows = []
    for _ in range(batch):
        cuts = torch.randperm(seq_len - 1, generator=gen)[: max(1, seq_len // 12)] + 1
        starts = torch.zeros(seq_len, dtype=torch.int64)
        starts[cuts] = 1
        starts[seq_len // 2] = 1
        if seq_len > 3:
            starts[seq_len - 1] = 1  # a one-token document at the end
        rows.append(torch.cumsum(starts, 0) + 7)
    return torch.stack(rows).to(DEVICE)


def kernel_and_reference(q, k, v, *, alpha, causal, doc_ids=None, block=(32, 32), grad_seed_gen=None,
                         through_stats=False):
    """Kernel output, stats and (dq, dk, dv); the same from the float64 reference.

    The output and gradients come from a call without return_stats, which takes the fused final
    pass where it applies (kernels.entmax_attention._fuses_output), and the stats from a second
    call; through_stats=True takes all three from the return_stats call (the plain passes)."""
    options = dict(alpha=alpha, causal=causal, doc_ids=doc_ids, block_sizes=block)
    if through_stats:
        out, stats = kernels.entmax_attention(q, k, v, return_stats=True, **options)
    else:
        out = kernels.entmax_attention(q, k, v, **options)
        with torch.no_grad():
            _, stats = kernels.entmax_attention(q, k, v, return_stats=True, **options)
    grad_out = torch.randn(out.shape, generator=grad_seed_gen).to(DEVICE, out.dtype)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)

    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref_out, ref_stats = reference.entmax_attention(q64, k64, v64, alpha=alpha, causal=causal, doc_ids=doc_ids,
                                                    return_stats=True, block_m=block[0], block_n=block[1])
    ref_grads = torch.autograd.grad(ref_out, (q64, k64, v64), grad_out.double())
    return (out, stats, grads), (ref_out, ref_stats, ref_grads)


def assert_matches(result, expected, *, fwd_tol, grad_tol):
    (out, _, grads), (ref_out, _, ref_grads) = result, expected
    errors = {"out": rel_error(out, ref_out)}
    for name, grad, ref_grad in zip(("dq", "dk", "dv"), grads, ref_grads):
        errors[name] = rel_error(grad, ref_grad)
    assert errors["out"] <= fwd_tol, errors
    assert max(errors[name] for name in ("dq", "dk", "dv")) <= grad_tol, errors


# (alpha, causal, batch, heads, kv_heads, seq_len, head_dim, block, q_scale)
REFERENCE_CASES = [
    (1.5, True, 1, 2, 2, 100, 32, (32, 32), 2.0),
    (1.5, False, 1, 2, 2, 100, 32, (32, 32), 2.0),
    (2.0, True, 1, 2, 1, 100, 32, (32, 32), 2.0),
    (2.0, False, 1, 2, 1, 100, 32, (32, 32), 2.0),
    (1.25, True, 1, 2, 1, 100, 32, (32, 32), 2.0),
    (1.25, False, 1, 2, 2, 100, 32, (32, 32), 2.0),
    (1.5, True, 1, 4, 1, 63, 32, (16, 16), 2.0),  # GQA 4
    (2.0, False, 2, 4, 2, 63, 64, (16, 32), 2.0),  # GQA 2, batch 2
    (1.5, True, 1, 2, 1, 1, 32, (16, 16), 1.0),  # a single token
    (2.0, False, 1, 2, 2, 1, 64, (16, 16), 1.0),
    (1.5, True, 1, 2, 2, 257, 64, (64, 64), 3.0),
    (1.25, False, 1, 2, 1, 257, 32, (64, 32), 3.0),
]


@pytest.mark.parametrize("alpha,causal,batch,heads,kv_heads,seq_len,head_dim,block,q_scale", REFERENCE_CASES)
def test_forward_and_gradients_match_reference(gen, alpha, causal, batch, heads, kv_heads, seq_len, head_dim,
                                               block, q_scale):
    q, k, v = make_qkv(gen, batch, heads, kv_heads, seq_len, head_dim, q_scale=q_scale)
    result, expected = kernel_and_reference(q, k, v, alpha=alpha, causal=causal, block=block, grad_seed_gen=gen)
    assert_matches(result, expected, fwd_tol=1e-5, grad_tol=1e-4)


@pytest.mark.parametrize("head_group", [1, 2])
def test_launch_head_groups_cover_every_query_tile(gen, monkeypatch, head_group):
    """Query-tile programs run in groups of head_group heads (5 heads: the last group is short)
    and still compute every (head, query tile) once: output and gradients match the reference."""
    monkeypatch.setattr(attention_module, "_launch_head_group", lambda q, k, **launch: head_group)
    q, k, v = make_qkv(gen, 1, 5, 5, 70, 32, q_scale=2.0)
    result, expected = kernel_and_reference(q, k, v, alpha=1.5, causal=True, block=(16, 16), grad_seed_gen=gen)
    assert_matches(result, expected, fwd_tol=1e-5, grad_tol=1e-4)


def test_launch_head_group_sizes(monkeypatch):
    """Groups hold one L2 (50 MiB here) of the tensors a launch reads, once those of all heads
    overflow two L2s (the measured cases of docs/benchmarks.md §1u and §1v, 16 heads, D 128)."""
    monkeypatch.setattr(attention_module, "_DEFAULT_L2_BYTES", 50 * 2**20)

    def group(n, batch=1, heads=16, kv_heads=16, d=128, dtype=torch.bfloat16, **launch):
        q, k = torch.empty(batch, heads, 1, d, dtype=dtype), torch.empty(batch, kv_heads, n, d, dtype=dtype)
        return attention_module._launch_head_group(q, k, **launch)

    assert [group(n) for n in (4096, 8192, 16384, 32768)] == [16, 16, 6, 3]  # 8 MiB of K and V a head at 16k
    assert [group(n, tensors_read=1) for n in (4096, 8192, 16384, 32768)] == [16, 16, 16, 6]
    assert group(8192, batch=4) == 12  # the group counts (batch * head) rows
    assert group(32768, kv_heads=4) == 16  # 64 MiB of K and V in all: no grouping
    assert group(65536, kv_heads=4) == 4  # one kv head held, its 4 query heads read it
    assert group(32768, d=64, dtype=torch.float32) == 3
    assert group(2**20) == 1  # never fewer than one kv head's queries


@pytest.mark.parametrize("alpha,causal", [(1.5, True), (2.0, False)])
def test_gradients_with_skipped_tiles(gen, alpha, causal):
    q, k, v = local_qkv(gen, 1, 2, 128, 32, sharpness=2.0)
    result, expected = kernel_and_reference(q, k, v, alpha=alpha, causal=causal, block=(16, 16), grad_seed_gen=gen)
    assert result[1]["block_sparsity"] > 0.4
    assert_matches(result, expected, fwd_tol=1e-5, grad_tol=1e-4)


@pytest.mark.parametrize("alpha,causal", [(1.5, True), (2.0, False)])
def test_gradients_through_the_stats_path(gen, alpha, causal):
    """With return_stats the forward ends with the plain output pass instead of the fused final
    pass (docs/kernels.md); its output and the values it leaves for the backward match too."""
    q, k, v = local_qkv(gen, 1, 2, 96, 32, sharpness=2.0)
    result, expected = kernel_and_reference(q, k, v, alpha=alpha, causal=causal, block=(16, 16), grad_seed_gen=gen,
                                            through_stats=True)
    assert_matches(result, expected, fwd_tol=1e-5, grad_tol=1e-4)


@triton.jit
def _final_pass_probe(Q, K, V, TileList, TileGap, Threshold, Step, Out, Obar, N, z_scale, power,
                      HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, ALPHA_MODE: tl.constexpr):
    """One query tile: _final_pass over every key tile at the given per-row threshold, then the
    outputs _expanded_outputs gives at threshold + step."""
    rows = tl.arange(0, BLOCK)
    q = attention_module._load_rows(Q, rows, N, HEAD_DIM)
    threshold = tl.load(Threshold + rows)
    step = tl.load(Step + rows)
    mass, slope, curvature, acc_u2, acc_u, acc_support = attention_module._final_pass(
        q, K, V, 0, Q, rows, rows, 0, 0, 0, threshold, TileList, TileGap, tl.cdiv(N, BLOCK), N, z_scale, power,
        False, False, HEAD_DIM, BLOCK, BLOCK, ALPHA_MODE, "ieee", False)
    out, g_values, g_sum = attention_module._expanded_outputs(acc_u2, acc_u, acc_support, slope, curvature, step,
                                                              ALPHA_MODE)
    attention_module._store_outputs(Out, Obar, rows, N, out, g_values, g_sum, HEAD_DIM)


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_final_pass_expansion(gen, alpha):
    """The fused final pass's output at threshold + step, for steps far larger than the kernel ever
    takes there, against float64 on the threshold's support: sum_S (u - step)^power v and
    obar = sum_S g v / sum_S g with g = (u - step)^(power - 1)."""
    n, head_dim, block = 48, 32, 16
    q = torch.randn(n, head_dim, generator=gen, dtype=torch.float64)
    k = torch.randn(n, head_dim, generator=gen, dtype=torch.float64)
    v = torch.randn(n, head_dim, generator=gen, dtype=torch.float64)
    z_scale, power = (alpha - 1) / head_dim ** 0.5, 1 / (alpha - 1)
    z = z_scale * q[:block] @ k.T
    threshold = z.amax(dim=1) - 0.3 - 0.2 * torch.rand(block, generator=gen, dtype=torch.float64)
    step = 0.05 * (torch.rand(block, generator=gen, dtype=torch.float64) - 0.5)
    u = (z - threshold[:, None]).clamp_min(0)
    support = u > 0
    shifted = torch.where(support, u - step[:, None], 0.0)
    expected_out = shifted ** power @ v
    g = torch.where(support, shifted ** (power - 1), 0.0)
    expected_obar = (g @ v) / g.sum(dim=1, keepdim=True)

    out, obar = (torch.full((n, head_dim), float("nan"), device=DEVICE) for _ in range(2))
    tile_list = torch.arange(n // block, device=DEVICE, dtype=torch.int32)
    tile_gap = torch.full((n // block,), -1, device=DEVICE, dtype=torch.int32)  # poisoned: must be zeroed
    to32 = lambda t: t.to(DEVICE, torch.float32).contiguous()  # noqa: E731
    _final_pass_probe[(1,)](to32(q), to32(k), to32(v), tile_list, tile_gap, to32(threshold), to32(step), out, obar,
                            n, z_scale, power, HEAD_DIM=head_dim, BLOCK=block, ALPHA_MODE=_tau.alpha_mode(alpha))
    assert rel_error(out[:block], expected_out) <= 1e-5
    assert rel_error(obar[:block], expected_obar) <= 1e-5
    # each tile's largest z - threshold, for _keep_nonzero_tiles
    expected_gap = (z - threshold[:, None]).view(block, n // block, block).amax(dim=(0, 2))
    decoded = tile_gap.view(torch.float32) - 1.0
    assert rel_error(decoded, expected_gap.clamp_min(-1.0)) <= 1e-5


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_near_uniform_rows_still_sum_to_one(gen, alpha):
    """Hundreds of almost tied scores (an untrained model at long context) all land in the top
    histogram bin, far from tau: the default refinement must still reach fp32 rounding."""
    q, k, v = (t.detach() for t in make_qkv(gen, 1, 1, 1, 512, 16, q_scale=0.01))
    v.fill_(1.0)  # out = sum_j p_ij
    out = kernels.entmax_attention(q, k, v, alpha=alpha, causal=False)
    assert (out.double() - 1).abs().max().item() <= 1e-5


@pytest.mark.parametrize("far_level", [0.0, 0.9, 0.999])
def test_seed_start_far_from_tau(gen, far_level):
    """alpha = 1.5 starts from the seed tiles' own threshold (docs/kernels.md "Seed threshold"), a
    lower bound of tau. Here every row's maximum lies in the first key tile (a sink, always a seed
    tile), and the keys outside the seed tiles score far_level of it: near 1 they hold most of
    the mass, so the seed threshold lies far below tau and the dense pass's sums far from mass 1.
    The result must still match float64, on the fused path and on the plain (return_stats) one."""
    n, head_dim, block = 320, 32, 32
    z_scale = 0.5 / head_dim ** 0.5
    level = torch.full((n,), far_level, dtype=torch.float64) - 0.01 * torch.rand(n, generator=gen, dtype=torch.float64)
    level[:block] = 1.0 + 0.01 * torch.rand(block, generator=gen, dtype=torch.float64)  # the sink tile
    q = torch.zeros(1, 1, n, head_dim, dtype=torch.float64)
    k = torch.zeros(1, 1, n, head_dim, dtype=torch.float64)
    q[..., 0] = 3.0 / z_scale  # the sink's z is about 3
    k[0, 0, :, 0] = level
    v = torch.randn(1, 1, n, head_dim, generator=gen, dtype=torch.float64)
    expected = reference.entmax_attention(q, k, v, alpha=1.5, causal=True)
    q, k, v = (t.float().to(DEVICE) for t in (q, k, v))
    out = kernels.entmax_attention(q, k, v, alpha=1.5, causal=True, block_sizes=(block, block))
    stats_out, _ = kernels.entmax_attention(q, k, v, alpha=1.5, causal=True, block_sizes=(block, block),
                                            return_stats=True)
    assert rel_error(out, expected) <= 1e-5
    assert rel_error(stats_out, expected) <= 1e-5


@triton.jit
def _tile_gap_probe(RowMax, Ref, Bound, TileGaps, TileList, Kept, n_tiles, ROWS: tl.constexpr, CHUNK: tl.constexpr):
    """The dense pass's tile gaps from given per-row tile maxima ([ROWS, n_tiles]), then the tile
    dropping of step 5 against per-row lower bounds of tau."""
    rows = tl.arange(0, ROWS)
    ref = tl.load(Ref + rows)
    for kt in range(0, n_tiles):
        tl.store(TileGaps + kt, attention_module._tile_gap(tl.load(RowMax + rows * n_tiles + kt), ref))
    tl.debug_barrier()
    tl.store(Kept, attention_module._drop_zero_tiles(TileList, TileGaps, n_tiles, tl.load(Bound + rows), ref, CHUNK))


def test_tile_gaps_drop_tiles_per_row(gen):
    """Tile dropping by gaps against each row's reference (docs/kernels.md "Seed gaps"): a tile goes
    only where every row's largest z is at or below that row's own lower bound of tau (so never a
    tile holding a non-zero p), and rows whose bounds differ widely drop tiles that the tile's
    maximum against the rows' lowest bound has to keep. Rows with reference +inf (padding) do not
    count; a row with reference -inf (no seed entry) keeps every tile where it has an entry."""
    rows, n_tiles = 16, 40
    bound = torch.rand(rows, generator=gen, dtype=torch.float64) * 4  # lower bounds of tau, spread wide
    ref = bound - torch.rand(rows, generator=gen, dtype=torch.float64)  # references below them
    row_max = bound[:, None] + torch.randn(rows, n_tiles, generator=gen, dtype=torch.float64) - 1.5
    row_max[torch.rand(rows, n_tiles, generator=gen) < 0.2] = float("-inf")  # rows without an entry there
    row_max[:, 0] = float("-inf")  # a tile without any entry
    ref[3], bound[3] = float("inf"), float("inf")  # a padding row: its entries do not count
    row_max[3] = 100.0
    ref[5] = float("-inf")  # no seed entry: every tile where row 5 has an entry stays
    to32 = lambda t: t.to(DEVICE, torch.float32).contiguous()  # noqa: E731
    tile_gaps = torch.full((n_tiles,), float("nan"), device=DEVICE)
    tile_list = torch.arange(n_tiles, device=DEVICE, dtype=torch.int32)
    kept = torch.full((1,), -1, device=DEVICE, dtype=torch.int32)
    _tile_gap_probe[(1,)](to32(row_max), to32(ref), to32(bound), tile_gaps, tile_list, kept, n_tiles, ROWS=rows,
                          CHUNK=16)
    kept_tiles = set(tile_list[:kept.item()].tolist())

    counted = torch.ones(rows, dtype=torch.bool)
    counted[3] = False
    above = (row_max > bound[:, None]) & counted[:, None]
    has_entry = (row_max > float("-inf")) & counted[:, None]
    exact = set(torch.nonzero(above.any(0)).flatten().tolist())  # tiles a row's own bound cannot rule out
    assert exact <= kept_tiles, "a tile with a score above its row's bound of tau was dropped"
    assert set(torch.nonzero(has_entry[5]).flatten().tolist()) <= kept_tiles
    per_tile = set(torch.nonzero(row_max[counted].amax(0) > bound[counted].min()).flatten().tolist())
    assert kept_tiles <= per_tile
    assert len(kept_tiles) < len(per_tile), "the per-row test should drop tiles the per-tile one keeps"
    assert 0 not in kept_tiles
    assert list(tile_list[:kept.item()].tolist()) == sorted(kept_tiles)  # kept in order


def test_tile_gaps_with_a_reference_far_below_the_scores(gen):
    """The seed tiles score -5e5, so the rows' seed threshold (the tile gaps' reference) is about
    -5e5 and an fp32 gap there is rounded to 0.03: the small probabilities of probe keys just above
    tau (found in review) must survive the rounding of the zero-tile tests."""
    n, head_dim, block = 128, 16, 16
    q = torch.zeros(1, 1, n, head_dim)
    q[..., 0] = 8.0  # z = (alpha - 1) / sqrt(head_dim) * q.k = k[..., 0]
    k = torch.full((1, 1, n, head_dim), 0.0)
    k[..., 0] = -10.0
    k[0, 0, :2 * block, 0] = -5e5  # the query tiles' first seed tiles
    k[0, 0, 40, 0] = 1.0  # every row's maximum, outside tile 0's seeds
    for j in range(25):  # probes with p about 1e-4 in five key tiles
        k[0, 0, 48 + block * (j % 5) + j // 5, 0] = 0.01
    v = torch.randn(1, 1, n, head_dim, generator=gen)
    expected = reference.entmax_attention(q.double(), k.double(), v.double(), alpha=1.5, causal=False)
    out = kernels.entmax_attention(*(t.to(DEVICE) for t in (q, k, v)), alpha=1.5, causal=False,
                                   block_sizes=(block, block))
    assert rel_error(out, expected) <= 1e-5


@triton.jit
def _seed_start_probe(TSums, Mass, Slope, Curvature, Out, stop_residual, ROWS: tl.constexpr, PUSH: tl.constexpr):
    """_start_from_sums on given per-row power sums; Out gets t, lo and hi per row."""
    rows = tl.arange(0, ROWS)
    mass = tl.load(Mass + rows)
    t, lo, hi, _, _ = attention_module._start_from_sums(tl.load(TSums + rows), mass, tl.load(Slope + rows),
                                                        tl.load(Curvature + rows), mass > 0, stop_residual, 0.5,
                                                        PUSH)
    tl.store(Out + rows, t)
    tl.store(Out + ROWS + rows, lo)
    tl.store(Out + 2 * ROWS + rows, hi)


def _mass_at(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """sum_j [y_j - t]_+^2 per row (alpha = 1.5 in the shifted units), float64."""
    return ((y - t[:, None]).clamp(min=0) ** 2).sum(1)


@pytest.mark.parametrize("n, query_tile", [(1024, 15), (1024, 8), (2048, 31)])
def test_start_push_lands_nearer_tau(n, query_tile):
    """The seed start's push (START_PUSH, docs/kernels.md "Start push"): on the bench's long-regime
    inputs (head dim 128), the start's t moves up from the Halley step, stays in the bracket, which
    still holds tau, and leaves the query tile's largest residual |sum p - 1| at most half the plain
    step's (float64 replays: 3-10 times smaller). Sums that already converge keep the Halley step."""
    from scripts.bench_attention import make_qk

    q, k = make_qk(n, 128, "long", heads=1, dtype=torch.bfloat16)
    q, k = q[0, 0].double(), k[0, 0].double()
    first, keys = query_tile * 64, (query_tile + 1) * 64
    z = 0.5 / 128 ** 0.5 * (q[first:keys] @ k[:keys].T)  # (alpha - 1) * scale * q.k
    z = z.masked_fill(torch.arange(keys)[None, :] > torch.arange(first, keys)[:, None], float("-inf"))
    y = z - (z.amax(1, keepdim=True) - 1)  # the kernel's shifted units: tau in [0, 1)
    seeds = torch.cat([y[:, :64], y[:, first - 64:]], 1)  # the first key tile and the two up to the diagonal
    t_seed = exact_threshold(seeds)  # a lower bound of tau, as the kernel's seed threshold
    u = (y - t_seed[:, None]).clamp(min=0)
    sums = [(u * u).sum(1), -2 * u.sum(1), 2 * (u > 0).sum(1).double()]  # mass, slope, curvature
    tau = exact_threshold(y)

    def start(push, stop_residual=1e-2):
        out = torch.full((3 * 64,), float("nan"), device=DEVICE)
        _seed_start_probe[(1,)](*(x.to(DEVICE, torch.float32) for x in (t_seed, *sums)), out, stop_residual,
                                ROWS=64, PUSH=push)
        return out.view(3, 64).double().cpu()

    (t_plain, _, _), (t_pushed, lo, hi) = start(0.0), start(attention_module.START_PUSH.value)
    assert not torch.isnan(t_pushed).any()
    assert ((lo <= tau + 1e-5) & (tau <= hi + 1e-5)).all(), "the bracket lost tau"
    assert ((lo <= t_pushed) & (t_pushed <= hi)).all()
    assert (t_pushed >= t_plain).all() and (t_pushed > t_plain).any()
    residual_plain = (_mass_at(y, t_plain) - 1).abs().max()
    residual_pushed = (_mass_at(y, t_pushed) - 1).abs().max()
    assert residual_pushed <= 0.5 * residual_plain, (residual_pushed, residual_plain)
    # A tile whose sums are within the stop residual takes the Halley step as the last one, unpushed.
    assert torch.equal(start(attention_module.START_PUSH.value, stop_residual=1e3)[0], start(0.0, 1e3)[0])


@pytest.mark.parametrize("block", [(64, 16), (32, 32)])
def test_seed_start_tied_keys_sum_to_one(gen, block):
    """Exactly tied keys: no score leaves the support between the seed threshold and tau, so the
    seed start's quadratic upper bound equals tau in exact arithmetic and fp32 can round it below
    (found in review: the solver was then clamped under tau, |sum(p) - 1| up to 9e-5). Checked per
    row, which a whole-tensor error would dilute."""
    n, head_dim = 512, 32
    q = torch.randn(1, 1, n, head_dim, generator=gen)
    k = torch.randn(1, 1, 1, head_dim, generator=gen).expand(1, 1, n, head_dim).contiguous()
    v = torch.ones(1, 1, n, head_dim)  # out = sum_j p_ij
    q, k, v = (t.to(DEVICE) for t in (q, k, v))
    out = kernels.entmax_attention(q, k, v, alpha=1.5, causal=True, block_sizes=block)
    assert (out.double() - 1).abs().max().item() <= 1e-5


@pytest.mark.parametrize("causal,with_docs", [(True, False), (False, True)])
def test_tma_loads_match_pointer_loads(gen, monkeypatch, causal, with_docs):
    """Tiles read through tensor descriptors (_load_head_tile; by default on Hopper, in the kernels
    _TMA_LOAD_HEAD_DIMS names for the head dim) give the same output and gradients as the pointer
    loads: two batches, grouped query heads (each kv head read by two query heads), a length that
    ends mid-tile (rows past N must come back as zero) and, without causality, packed documents.
    Runs with no kernel and with each single kernel on descriptors, so that each kernel's
    switch is seen to reach that kernel and no other."""
    q, k, v = make_qkv(gen, 2, 4, 2, 100, 32, q_scale=2.0)
    doc_ids = random_doc_ids(gen, 2, 100) if with_docs else None
    grad_out = torch.randn(q.shape, generator=gen).to(DEVICE)
    head_rows_source = attention_module._head_rows_source
    kernel_names = ("forward", "bwd_dq", "bwd_dkdv")
    results, sources = {}, []

    def recorded_source(t, block_rows, tma):
        sources.append(type(head_rows_source(t, block_rows, tma)).__name__)
        return head_rows_source(t, block_rows, tma)

    monkeypatch.setattr(attention_module, "_head_rows_source", recorded_source)
    for by_descriptor in ((), *((name,) for name in kernel_names)):
        monkeypatch.setattr(attention_module, "_uses_tma_loads",
                            lambda head_dim, device, kernel, chosen=by_descriptor: kernel in chosen)
        sources.clear()
        out = kernels.entmax_attention(q, k, v, causal=causal, doc_ids=doc_ids, block_sizes=(32, 32))
        results[by_descriptor] = (out, *torch.autograd.grad(out, (q, k, v), grad_out))
        # In launch order, two tensors each: K and V for the forward, K and V for the dQ kernel,
        # Q and dO for the dK/dV kernel.
        expected = [kind for name in kernel_names
                    for kind in 2 * ["TensorDescriptor" if name in by_descriptor else "Tensor"]]
        assert sources == expected, by_descriptor
    by_pointer = results.pop(())
    for by_descriptor, result in results.items():
        for name, pointer_value, descriptor_value in zip(("out", "dq", "dk", "dv"), by_pointer, result):
            assert torch.isfinite(descriptor_value).all(), (by_descriptor, name)
            # The same operands into the same products: equal under the interpreter; compiled, the
            # builds may schedule the products' sums differently.
            assert rel_error(descriptor_value, pointer_value) <= 1e-6, (by_descriptor, name)


def test_tma_loads_only_on_hopper_and_not_in_the_dkdv_kernel_at_head_dim_64():
    uses = attention_module._uses_tma_loads
    for kernel in ("forward", "bwd_dq", "bwd_dkdv"):
        assert not uses(128, torch.device("cpu"), kernel)
    if torch.cuda.is_available() and not attention_module.is_interpreting():
        hopper = torch.cuda.get_device_capability()[0] >= 9
        assert {(d, k) for d in (32, 64, 128) for k in ("forward", "bwd_dq", "bwd_dkdv")
                if uses(d, torch.device("cuda"), k)} == ({(64, "forward"), (64, "bwd_dq"), (128, "forward"),
                                                           (128, "bwd_dq"), (128, "bwd_dkdv")} if hopper else set())


def test_threshold_launch_register_cap_only_where_it_applies():
    """The threshold launch's register cap (four programs per multiprocessor) applies only with
    two-byte inputs, alpha 1.5 (seed start), 64 x 64 tiles and 4 warps: at head dim 64 with the fused final pass,
    and at head dim 128 (plain passes) together with 2 stages, so that four programs also fit in
    shared memory."""
    def options(alpha=1.5, head_dim=64, fused_output=True, block=64, num_warps=4, dtype=torch.bfloat16):
        config = attention_module._LaunchConfig(alpha=alpha, causal=True, scale=0.125, n_iter=4, block_m=block,
                                                block_n=block, num_warps=num_warps, num_stages=3,
                                                fused_output=fused_output)
        return attention_module._tau_launch_options(config, head_dim, dtype)

    cap = attention_module._TAU_LAUNCH_MAX_REGISTERS
    assert cap == 128
    assert options() == {"maxnreg": cap}
    assert options(head_dim=128, fused_output=False) == {"maxnreg": cap, "num_stages": 2}
    assert options(head_dim=128) == {}
    assert options(head_dim=32) == {}
    assert options(head_dim=32, fused_output=False) == {}
    assert options(alpha=2.0) == {}
    assert options(alpha=2.0, head_dim=128, fused_output=False) == {}
    assert options(alpha=1.25, fused_output=False) == {}
    assert options(fused_output=False) == {}
    assert options(block=32) == {}
    assert options(head_dim=128, fused_output=False, block=32) == {}
    assert options(num_warps=8) == {}
    assert options(dtype=torch.float16) == {"maxnreg": cap}
    assert options(head_dim=128, fused_output=False, dtype=torch.float16) == {"maxnreg": cap, "num_stages": 2}
    assert options(dtype=torch.float32) == {}
    assert options(head_dim=128, fused_output=False, dtype=torch.float32) == {}


def test_document_ids_beyond_int32(gen):
    q, k, v = make_qkv(gen, 1, 2, 1, 40, 32)
    small = torch.tensor([[0] * 15 + [1] * 25])
    huge = torch.tensor([[0] * 15 + [2 ** 32] * 25])
    result = kernels.entmax_attention(q, k, v, alpha=1.5, causal=False, doc_ids=huge, block_sizes=(16, 16))
    expected = reference.entmax_attention(q.double(), k.double(), v.double(), alpha=1.5, causal=False, doc_ids=small)
    assert rel_error(result, expected) < 1e-5


@pytest.mark.parametrize("alpha,causal,batch", [(1.5, True, 2), (1.5, False, 1), (2.0, True, 1), (1.25, False, 1)])
def test_packed_documents(gen, alpha, causal, batch):
    q, k, v = make_qkv(gen, batch, 2, 1, 100, 32, q_scale=2.0)
    doc_ids = random_doc_ids(gen, batch, 100)
    result, expected = kernel_and_reference(q, k, v, alpha=alpha, causal=causal, doc_ids=doc_ids, block=(16, 16),
                                            grad_seed_gen=gen)
    assert_matches(result, expected, fwd_tol=1e-5, grad_tol=1e-4)
    assert result[1]["block_sparsity"] == pytest.approx(expected[1]["block_sparsity"], abs=1e-12)


def test_documents_skip_tiles_that_cannot_meet(gen):
    # Four documents of 32 tokens, tiles of 16: non-causal attention allows only the 2x2 tile
    # blocks on the diagonal, 16 of the 64 tiles.
    q, k, v = make_qkv(gen, 1, 1, 1, 128, 32)
    doc_ids = (torch.arange(128) // 32).unsqueeze(0).to(DEVICE)
    _, stats = kernels.entmax_attention(q, k, v, causal=False, doc_ids=doc_ids, return_stats=True,
                                        block_sizes=(16, 16))
    assert stats["allowed_tiles"] == 16


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25])
def test_large_logits(gen, alpha):
    # Scores near +-100 * sqrt(D) / sqrt(D): almost every row keeps one or two keys.
    q, k, v = make_qkv(gen, 1, 2, 1, 100, 32, q_scale=100.0)
    result, expected = kernel_and_reference(q, k, v, alpha=alpha, causal=True, block=(32, 32), grad_seed_gen=gen)
    # Scores of magnitude ~1e3 carry fp32 rounding of ~1e-4 into z - tau.
    assert_matches(result, expected, fwd_tol=1e-4, grad_tol=1e-3)


@pytest.mark.parametrize("causal", [True, False])
def test_rows_past_the_end_stay_finite_in_dk_dv(gen, causal):
    """The dK/dV kernel reads tau and delta unmasked, rows past N taking row N - 1's values, and
    masks every tile of the last query tile so that those rows get p = 0 and dS = 0. Row N - 1's
    scores here lie near -4e10 (so does its tau): a padding row scoring 0 against it would get
    u ~ 4e10 and, at alpha = 1.25, p = u^4 = inf, and inf * 0 = NaN in dK and dV. (Row N - 1's
    own result is beyond fp32 at that magnitude; the reference cases with N = 63, 100 and 257
    check the padding rows' exactness.)"""
    q, k, v = make_qkv(gen, 1, 1, 1, 100, 32)
    with torch.no_grad():
        direction = torch.randn(32, generator=gen).to(DEVICE)
        k += 3.0 * direction
        q[0, 0, 99] = -1e10 * direction
    out = kernels.entmax_attention(q, k, v, alpha=1.25, causal=causal, block_sizes=(32, 32))
    grads = torch.autograd.grad(out, (q, k, v), torch.randn(out.shape, generator=gen).to(DEVICE))
    for name, grad in zip(("dq", "dk", "dv"), grads):
        assert torch.isfinite(grad).all(), name


@pytest.mark.parametrize("causal,with_docs", [(True, False), (False, False), (False, True)])
def test_block_sparsity_matches_reference(gen, causal, with_docs):
    q, k, v = local_qkv(gen, 1, 2, 160, 32, sharpness=2.0)
    doc_ids = random_doc_ids(gen, 1, 160) if with_docs else None
    with torch.no_grad():
        out, stats = kernels.entmax_attention(q, k, v, causal=causal, doc_ids=doc_ids, return_stats=True,
                                              block_sizes=(16, 16))
        probs = reference.entmax_attention_probs(q.double(), k.double(), causal=causal, doc_ids=doc_ids)
        allowed = reference.allowed_mask(160, 160, causal=causal, doc_ids=doc_ids, device=probs.device)
        expected = reference.block_sparsity(probs, allowed, block_m=16, block_n=16)
    assert 0.05 < expected < 1.0, "inputs should be partly block-sparse for this test to mean something"
    assert stats["block_sparsity"] == pytest.approx(expected, abs=1e-12)
    assert (stats["block_m"], stats["block_n"]) == (16, 16)


@pytest.mark.parametrize("causal,with_docs,fused", [(True, False, False), (False, True, False), (True, False, True)])
def test_tile_mask_is_written_whole_from_poisoned_memory(gen, monkeypatch, causal, with_docs, fused):
    """The dense tile mask (the backward's key-tile lists read it) is allocated without a fill: the
    output launch writes each query tile's whole row (_mark_tiles), here over several chunks of 4
    tiles. With its memory poisoned, the plain passes' mask must equal the reference's non-zero
    tiles exactly (they list exactly those); the fused final pass's mask must be its list (a
    superset of them, which the backward visits)."""
    q, k, v = local_qkv(gen, 1, 2, 160, 32, sharpness=2.0)
    doc_ids = random_doc_ids(gen, 1, 160) if with_docs else None
    empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(7) if t.dtype == torch.int8 else t

    monkeypatch.setattr(torch, "empty", poisoned_empty)
    monkeypatch.setattr(attention_module, "_COMPACTION_CHUNK", 4)  # 10 key tiles: three chunks per row
    config = attention_module._LaunchConfig(alpha=1.5, causal=causal, scale=32 ** -0.5,
                                            n_iter=2 if fused else attention_module.default_n_iter(1.5),
                                            block_m=16, block_n=16, num_warps=4, num_stages=1, fused_output=fused)
    ids, doc_start, doc_end = attention_module._document_arguments(doc_ids, 1, 160, q.device)
    with torch.no_grad():
        _, _, _, tile_list, tile_mask, nonzero_count, _ = attention_module._forward(q, k, v, ids, doc_start, doc_end,
                                                                                   config)
        probs = reference.entmax_attention_probs(q.double(), k.double(), causal=causal, doc_ids=doc_ids)
    nonzero = (probs.view(2, 10, 16, 10, 16) > 0).any(dim=4).any(dim=2).to(torch.int8).cpu()
    assert 0 < nonzero.sum() < nonzero.numel(), "inputs should be partly block-sparse"
    tile_mask, tile_list, nonzero_count = tile_mask.cpu(), tile_list.cpu(), nonzero_count.cpu()
    listed = torch.zeros_like(tile_mask)
    for head in range(2):
        for qt in range(10):
            listed[head, qt, tile_list[head, qt, :nonzero_count[head, qt]].long()] = 1
    assert torch.equal(tile_mask, listed)
    if fused:
        assert bool((tile_mask >= nonzero).all()) and tile_mask.sum() >= nonzero.sum()
    else:
        assert torch.equal(tile_mask, nonzero)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25, 1.75])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-3)])
def test_probabilities_sum_to_one(gen, alpha, dtype, tol):
    """sum_j p_ij at the kernel's tau, in float64 from the same (rounded) inputs; with and without
    the fused final pass where it applies."""
    q, k, v = (t.detach() for t in make_qkv(gen, 1, 2, 2, 80, 32, q_scale=2.0, dtype=dtype))
    for fused in {False, attention_module._fuses_output(alpha, 32, 3)}:
        config = attention_module._LaunchConfig(alpha=alpha, causal=False, scale=32 ** -0.5, n_iter=3, block_m=32,
                                                block_n=32, num_warps=4, num_stages=1, fused_output=fused)
        placeholder = torch.zeros(1, dtype=torch.int32, device=DEVICE)
        out, _, tau, *_ = attention_module._forward(q, k, v, placeholder, None, None, config)
        z = config.z_scale * (q.double() @ k.double().transpose(-1, -2))
        probs = (z - tau.double().view(1, 2, 80, 1)).clamp_min(0) ** config.power
        assert torch.isfinite(probs).all()
        assert (probs.sum(-1) - 1).abs().max().item() <= tol, f"fused_output={fused}"
    if dtype == torch.float32:  # the output path too: with v[..., 0] = 1, out[..., 0] = sum_j p_ij
        v[..., 0] = 1.0
        out = kernels.entmax_attention(q, k, v, alpha=alpha, causal=False, block_sizes=(32, 32))
        assert (out[..., 0].double() - 1).abs().max().item() <= tol


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(gen, dtype):
    q, k, v = make_qkv(gen, 1, 2, 1, 100, 64, q_scale=2.0, dtype=dtype)
    result, expected = kernel_and_reference(q, k, v, alpha=1.5, causal=True, block=(32, 32), grad_seed_gen=gen)
    assert result[0].dtype == dtype and all(g.dtype == dtype for g in result[2])
    # The kernel rounds p and dS to 16 bits before its matrix products, as FlashAttention does.
    assert_matches(result, expected, fwd_tol=2e-2, grad_tol=3e-2)


def test_matches_entmax_package(gen):
    entmax_package = pytest.importorskip("entmax")
    q, k, v = make_qkv(gen, 1, 2, 2, 63, 32, q_scale=2.0)
    scores = (q.detach().double() @ k.detach().double().transpose(-1, -2)) / 32 ** 0.5
    scores = scores.masked_fill(torch.ones(63, 63, dtype=torch.bool, device=DEVICE).triu(1), float("-inf"))
    package_maps = {1.5: entmax_package.entmax15, 2.0: entmax_package.sparsemax,
                    1.25: lambda x, dim: entmax_package.entmax_bisect(x, alpha=1.25, dim=dim, n_iter=200)}
    for alpha, package_map in package_maps.items():
        expected = package_map(scores, dim=-1) @ v.detach().double()
        with torch.no_grad():
            out = kernels.entmax_attention(q, k, v, alpha=alpha, causal=True, block_sizes=(16, 16))
        assert rel_error(out, expected) <= 1e-5, alpha


def test_every_output_element_is_written(gen, poisoned_empty):
    """Buffers from torch.empty/empty_like come back full of NaN (floats) or garbage (ints)."""
    q, k, v = make_qkv(gen, 1, 2, 1, 50, 32, q_scale=2.0)
    result, expected = kernel_and_reference(q, k, v, alpha=1.5, causal=True, block=(16, 16), grad_seed_gen=gen)
    assert_matches(result, expected, fwd_tol=1e-5, grad_tol=1e-4)


def test_non_contiguous_inputs_give_the_same_result(gen):
    q, k, v = make_qkv(gen, 1, 2, 2, 40, 32, q_scale=2.0)
    # (B, N, H, D) storage viewed as (B, H, N, D), as attention modules often produce.
    q_strided, k_strided, v_strided = (t.detach().transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    assert not q_strided.is_contiguous()
    with torch.no_grad():
        expected = kernels.entmax_attention(q.detach(), k.detach(), v.detach(), block_sizes=(16, 16))
        out = kernels.entmax_attention(q_strided, k_strided, v_strided, block_sizes=(16, 16))
    assert torch.equal(out, expected)


def test_return_stats_reports_tile_counts(gen):
    q, k, v = make_qkv(gen, 1, 2, 1, 40, 32)
    out, stats = kernels.entmax_attention(q, k, v, return_stats=True, block_sizes=(16, 16))
    assert out.shape == q.shape
    # 3 query tiles; causal: 1 + 2 + 3 key tiles each, times 2 heads.
    assert stats["allowed_tiles"] == 12
    assert 0 < stats["nonzero_tiles"] <= 12
    assert stats["block_sparsity"] == pytest.approx(1 - stats["nonzero_tiles"] / 12)


def _qkv(shape_q=(1, 2, 8, 32), shape_kv=(1, 2, 8, 32), dtype=torch.float32, device=None):
    device = device or DEVICE
    return (torch.randn(*shape_q, dtype=dtype, device=device), torch.randn(*shape_kv, dtype=dtype, device=device),
            torch.randn(*shape_kv, dtype=dtype, device=device))


BAD_INPUTS = [
    (lambda: (*_qkv(shape_q=(2, 8, 32)), {}), ValueError, "q must be 4-D"),
    (lambda: (*_qkv(shape_kv=(1, 2, 9, 32)), {}), ValueError, "does not match q shape"),
    (lambda: (*_qkv(shape_q=(1, 3, 8, 32)), {}), ValueError, "multiple of k/v heads"),
    (lambda: (*_qkv(shape_q=(1, 2, 8, 48), shape_kv=(1, 2, 8, 48)), {}), ValueError, "head_dim"),
    (lambda: (*_qkv(dtype=torch.float64), {}), TypeError, "float64"),
    (lambda: (_qkv()[0], _qkv()[1].half(), _qkv()[2], {}), TypeError, "share a dtype"),
    (lambda: (*_qkv(), {"alpha": 1.0}), ValueError, "alpha must be in (1, 2]"),
    (lambda: (*_qkv(), {"alpha": 2.5}), ValueError, "alpha must be in (1, 2]"),
    (lambda: (*_qkv(), {"alpha": "1.5"}), ValueError, "alpha must be a float"),
    (lambda: (*_qkv(), {"n_iter": -1}), ValueError, "n_iter"),
    (lambda: (*_qkv(), {"scale": 0.0}), ValueError, "scale"),
    (lambda: (*_qkv(), {"causal": "yes"}), TypeError, "causal"),
    (lambda: (*_qkv(), {"doc_ids": torch.zeros(1, 7, dtype=torch.long, device=DEVICE)}), ValueError, "doc_ids"),
    (lambda: (*_qkv(), {"doc_ids": torch.zeros(1, 8, device=DEVICE)}), TypeError, "doc_ids must hold integers"),
    (lambda: (*_qkv(), {"doc_ids": torch.tensor([[0, 0, 1, 1, 0, 2, 2, 2]], device=DEVICE)}), ValueError,
     "non-decreasing"),
    (lambda: (*_qkv(), {"block_sizes": (24, 16)}), ValueError, "power of two"),
    (lambda: (_qkv()[0], _qkv(device="meta")[1], _qkv()[2], {}), ValueError, "one device"),
    (lambda: (*_qkv(device="meta"), {}), RuntimeError, "kernels.reference"),
    (lambda: (*_qkv(shape_q=(65536, 1, 1, 16), shape_kv=(65536, 1, 1, 16)), {}), ValueError,
     "65536 batch * heads exceed CUDA's grid limit"),
]


def test_sequences_beyond_the_grid_limit_are_refused():
    """Query tiles sit in a grid dimension CUDA caps at 65535 (inputs that long are too large to
    allocate here, so the check is called directly)."""
    check_grid = sys.modules["kernels.entmax_attention"]._check_grid
    check_grid(16, 65535 * 64, 64)
    with pytest.raises(ValueError, match="65536 query tiles exceed .* use a shorter seq_len"):
        check_grid(16, 65535 * 64 + 1, 64)
    check_grid(16, 65535 * 64 + 1, 128)


@pytest.mark.parametrize("make,error,message", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(make, error, message):
    *tensors, kwargs = make()
    with pytest.raises(error, match=re.escape(message)):
        kernels.entmax_attention(*tensors, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-without-interpreter error needs a CPU-only machine")
def test_cpu_without_interpreter_is_a_clear_error():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    code = ("import torch, kernels\n"
            "q = torch.randn(1, 1, 4, 16)\n"
            "try:\n    kernels.entmax_attention(q, q, q)\n"
            "except RuntimeError as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert "TRITON_INTERPRET=1" in result.stdout and "kernels.reference" in result.stdout, result.stderr


def _sink_qkv(gen, seq_len, head_dim, sink):
    """local_qkv plus one key every query prefers (an "attention sink") at position `sink`."""
    q, k, v = (t.detach() for t in local_qkv(gen, 1, 2, seq_len, head_dim, sharpness=2.0))
    k[..., sink, :] = q.mean(dim=2) * 3.0 / q.mean(dim=2).norm(dim=-1, keepdim=True) ** 2 * head_dim ** 0.5
    return [t.requires_grad_() for t in (q, k, v)]


@pytest.mark.parametrize("sink,sharpness", [(None, 2.0), (None, 0.3), (0, 2.0), (90, 2.0)])
def test_histogram_binned_in_the_dense_pass(gen, sink, sharpness):
    """The forward bins the histogram during the dense pass against the row maxima of a few seed
    tiles (the first key tile and those around the diagonal) and redoes it where a row's maximum
    lies elsewhere: diagonal maxima (None), a sink in the first tile (0), and one in a middle tile
    (90, outside the seeds of the later query tiles: the histogram pass runs again there). Flat
    rows (sharpness 0.3) put tau low, where scores far from the diagonal still count."""
    if sink is None:
        q, k, v = local_qkv(gen, 1, 2, 160, 32, sharpness=sharpness)
    else:
        q, k, v = _sink_qkv(gen, 160, 32, sink)
        scores = q[0, 0].detach() @ k[0, 0].detach().T
        assert (scores.argmax(dim=1)[sink + 16:] == sink).float().mean() > 0.5, "the sink should hold row maxima"
    result, expected = kernel_and_reference(q, k, v, alpha=1.5, causal=True, block=(16, 16), grad_seed_gen=gen)
    assert result[1]["block_sparsity"] == pytest.approx(expected[1]["block_sparsity"], abs=1e-12)
    assert_matches(result, expected, fwd_tol=1e-5, grad_tol=1e-4)
