"""Fused alpha-entmax attention in Triton: forward and backward, with zero-tile skipping.

The algorithm is ARCHITECTURE.md section 4; docs/kernels.md explains the design and the measured
speed. In short, the forward is two launches, each with one program per (query tile, head). The
first (_entmax_attention_tau_kernel) finds tau:

1. a dense pass over every allowed key tile: the row maxima m and each tile's maximum score, and,
   binned on the fly against the row maxima of a few seed tiles (the first key tile and those
   around the diagonal), the histogram of step 3; at alpha = 1.5 instead the power sums at the
   seed tiles' own threshold, a lower bound of tau solved over those tiles first (_seed_threshold);
2. candidate tiles: a tile whose maximum is below min(m) - 1 holds only exact zeros, because
   tau >= m - 1 for every row; the others are compacted into a per-query-tile list;
3. the start: from the histogram, per-row counts of y = z - (m - 1) in [0, 1], a bracket for tau
   one bin wide (kernels/_tau.py; a separate pass over the candidates recomputes it only for query
   tiles where some row's maximum lies outside the seed tiles); at alpha = 1.5, from the dense
   pass's sums, a bracket and a first Halley step, pushed up toward tau (_start_from_sums,
   START_PUSH);
4. at most n_iter Halley passes over the listed tiles; after the start and after each step,
   tiles whose stored maximum is at or below every row's lower bound of tau (never above the
   final tau) are dropped, at no matrix-product cost.

The second (_entmax_attention_output_kernel) is the output pass over the remaining tiles: the
output, obar = sum g v / sum g (g = p^(2 - alpha), for the backward's delta), and the tiles that
really hold non-zero probabilities: the backward visits only those. For alpha 1.5 and 2 at
head_dim <= 64 (_fuses_output) the first launch stops after one Halley pass (none for query tiles
its start leaves close enough) and the output launch's first pass is also the last Halley pass:
_final_pass gathers the output around its threshold and _expanded_outputs moves it to the stepped
tau exactly on that support.

Scores are z = (alpha - 1) * scale * q.k throughout; masked entries are -inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from . import _tau

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128, 256)
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MAX_N_ITER = 10
# Bins of the histogram that brackets tau. 8 bins and two Halley steps bring |sum(p) - 1| to fp32
# rounding on every row family we simulated except near-uniform rows, which take a third or fourth
# step (scripts/tau_convergence.py); refinement stops early once a tile has converged, so those
# steps cost only where they are needed. 8 bins were faster than 16 and 4 (docs/kernels.md).
NUM_BINS = 8
# With the seed start (alpha = 1.5), a query tile whose dense-pass sums leave every row within this
# residual of mass 1 goes straight to the output launch's final pass: on the bench inputs (8k and
# 32k) the tiles that then converged in that one pass had residuals up to 0.41-0.59, those that
# needed two from 0.56-0.72 on (docs/experiments/sim_seed_threshold.py). A wrong guess costs a
# pass, not accuracy, as long as n_iter >= 3 leaves the output launch a fallback pass (default 4).
SEED_STRAIGHT_RESIDUAL = 0.5
# The first Halley step from the seed sums (_start_from_sums) lands below tau, and the further the
# larger the sums' excess mass e = mass - 1 at the seed threshold t_s: replayed in float64 on the
# bench inputs (head dim 128, 8k, long and trained), (tau - t) / (t - t_s) has a median of at most
# 4e-5 for e < 0.05 and of 0.046, 0.059 and 0.082 for e in [0.9, 1.1), [1.1, 1.4) and [1.4, 2).
# The start moves t up by START_PUSH * e^1.5 * (t - max(t_s, 0)) (fit there), within the bracket.
# Replayed, the refinement passes per query tile after the start fall from 1.53-1.55 to 1.20-1.24
# in the long regime (4k-16k) and from 1.48-1.50 to 1.00-1.06 in the trained one; at head dim 64
# they stay level or fall (docs/kernels.md, "Start push"). A wrong guess costs a pass, not
# accuracy: the bracket is unchanged.
START_PUSH = tl.constexpr(0.045)
# Entries of a per-query-tile list handled at once when lists are compacted.
_COMPACTION_CHUNK = 128
# Register cap (ptxas's maxnreg) of the threshold launch where it applies (_tau_launch_options).
# Measured at head dim 64 with the seed start and the fused final pass, 64 x 64 tiles, 4 warps. A
# multiprocessor holds 64 Ki registers; uncapped the launch takes 162 per thread (Triton 3.6),
# three 4-warp programs per multiprocessor; at 128 four fit, without spills. H200 A/B: that
# launch -7 % at 8k, -10 % at 32k, unchanged at 4k. The same kind of cap on the output launch
# (168) and the dK/dV kernel (168) spilled and was slower, on the dQ kernel (128) it changed
# nothing (docs/kernels.md, "Register caps").
_TAU_LAUNCH_MAX_REGISTERS = 128
# Launch options that differ from the common ones (_default_tiles), per kernel and head dim. At
# head dim 128 the dK/dV kernel's two [64, 128] fp32 accumulators alone take 128 registers per
# thread with 4 warps: with 3 stages ptxas spills 112 bytes (Triton 3.6, offline), with 2 stages 88
# (a shorter loop); on the H200, 2 stages made it 30-34 % faster, 8 warps 2.5x slower
# (docs/benchmarks.md §1j). The dQ kernel's 3 stages of K and V tiles take 128 KiB of shared
# memory at head dim 128, one program per multiprocessor; 2 stages take 96 KiB, two programs.
_LAUNCH_OPTIONS = {"bwd_dkdv": {128: dict(num_stages=2)}, "bwd_dq": {128: dict(num_stages=2)}}


def _launch_options(kernel: str, head_dim: int) -> dict:
    """The launch options `kernel` ("tau", "output", "bwd_dq" or "bwd_dkdv") takes at this head
    dim on top of the common ones."""
    return _LAUNCH_OPTIONS.get(kernel, {}).get(head_dim, {})


# ----------------------------------------------------------------------------------------------
# Small jit helpers shared by the forward and backward kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _dot(a, b, acc, DOT_PRECISION: tl.constexpr):
    """a @ b (+ acc) in fp32. DOT_PRECISION is "ieee" (exact fp32 products, for fp32 inputs),
    "tf32" (the tensor-core default; 16-bit inputs are multiplied exactly either way), or
    "upcast", which multiplies 16-bit operands as fp32: Triton's CPU interpreter mishandles
    bfloat16 products, and the upcast is exact."""
    if DOT_PRECISION == "upcast":
        result = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        result = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return result


@triton.jit
def _load_rows(head_ptr, positions, N, HEAD_DIM: tl.constexpr):
    """Rows `positions` of a contiguous [N, HEAD_DIM] matrix; rows past N read as zero."""
    dims = tl.arange(0, HEAD_DIM)
    return tl.load(head_ptr + positions[:, None] * HEAD_DIM + dims[None, :],
                   mask=positions[:, None] < N, other=0.0)


@triton.jit
def _load_head_tile(Source, head, head_offset, first_row, N, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
                    TMA: tl.constexpr):
    """Rows [first_row, first_row + BLOCK) of one head of a contiguous [heads, N, HEAD_DIM] tensor,
    rows past N as zero. TMA: Source is a tensor descriptor of the whole tensor (_head_rows_source)
    and the tile comes in one bulk copy, which needs no per-thread addresses or masks; otherwise
    Source is the tensor's pointer and head_offset the head's first element (_load_rows)."""
    if TMA:
        tile = Source.load([head, first_row, 0]).reshape(BLOCK, HEAD_DIM)
    else:
        tile = _load_rows(Source + head_offset, first_row + tl.arange(0, BLOCK), N, HEAD_DIM)
    return tile


@triton.jit
def _head_source(Source, head_offset, TMA: tl.constexpr):
    """What _load_head_tile reads one head through: the tensor descriptor itself (TMA; the head is
    a coordinate) or the tensor's pointer moved to the head's first element (head_offset 0 then)."""
    if TMA:
        head_source = Source
    else:
        head_source = Source + head_offset
    return head_source


@triton.jit
def _load_doc_ids(doc_ptr, positions, N, padding_id, HAS_DOCS: tl.constexpr):
    if HAS_DOCS:
        docs = tl.load(doc_ptr + positions, mask=positions < N, other=padding_id)
    else:
        docs = positions
    return docs


@triton.jit
def _allowed(query_pos, key_pos, query_doc, key_doc, N, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr):
    """Which (query, key) pairs may attend; the arguments broadcast against each other."""
    allowed = (query_pos < N) & (key_pos < N)
    if CAUSAL:
        allowed = allowed & (key_pos <= query_pos)
    if HAS_DOCS:
        allowed = allowed & (query_doc == key_doc)
    return allowed


@triton.jit
def _tile_needs_mask(first_row, first_col, N, doc_q_first, doc_q_last, DocIds_b, CAUSAL: tl.constexpr,
                     HAS_DOCS: tl.constexpr, BLOCK_N: tl.constexpr):
    """Whether any pair of the tile at (first_row, first_col) is masked for a real query row.

    The mask costs several operations per score, about as much as the matrix product itself at
    head_dim 64, so it is applied only to tiles on the diagonal, at the end of the sequence, or
    spanning a document edge. (Padding rows past N need no mask: their threshold is +inf.)
    """
    needs_mask = first_col + BLOCK_N > N
    if CAUSAL:
        needs_mask = needs_mask | (first_col + BLOCK_N - 1 > first_row)
    if HAS_DOCS:
        # Sorted ids: one shared document iff the query tile's first id is the key tile's last
        # and its last id the key tile's first.
        doc_k_first = tl.load(DocIds_b + first_col)
        doc_k_last = tl.load(DocIds_b + tl.minimum(first_col + BLOCK_N, N) - 1)
        needs_mask = needs_mask | (doc_q_first != doc_k_last) | (doc_q_last != doc_k_first)
    return needs_mask


@triton.jit
def _raw_scores(q, k, rows, cols, row_docs, DocIds_b, needs_mask, N,
                CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """q k^T for a [BLOCK_M, BLOCK_N] tile, unscaled, -inf where masked (if the tile needs it).

    Callers fold the (alpha - 1) * scale factor into the one fused multiply-add that also
    subtracts their per-row shift or threshold.
    """
    raw = _dot(q, tl.trans(k), None, DOT_PRECISION)
    if needs_mask:
        col_docs = _load_doc_ids(DocIds_b, cols, N, -1, HAS_DOCS)
        allowed = _allowed(rows[:, None], cols[None, :], row_docs[:, None], col_docs[None, :], N, CAUSAL, HAS_DOCS)
        raw = tl.where(allowed, raw, float("-inf"))
    return raw


@triton.jit
def _query_tile_program(N, n_q_tiles, head_group, H: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr):
    """This program's query tile, (batch * head) index and batch, the kv head its head reads
    (grouped-query), the element offsets of the two heads, and its row of the tile tables.

    Programs start roughly in launch order (program_id(0) fastest). The (batch * head) rows run in
    groups of head_group (_launch_head_group), one group after another, so that a group's keys and
    values stay in L2 while its programs read them. Within a group the heads alternate and query
    tiles run last first: under a causal mask the last query tiles read the most key tiles, so the
    heaviest programs start first and the light ones fill the tail (the longest-first rule of
    scheduling). docs/kernels.md, "Launch order"."""
    heads_total = tl.num_programs(0)
    launch = tl.program_id(1) * heads_total + tl.program_id(0)  # the program's place in launch order
    first_head = launch // (head_group * n_q_tiles) * head_group
    heads_here = tl.minimum(heads_total - first_head, head_group)  # the last group may be short
    within = launch - first_head * n_q_tiles
    bh = first_head + within % heads_here
    qt = n_q_tiles - 1 - within // heads_here
    batch = bh // H
    kv_head = batch * (H // GROUP) + (bh % H) // GROUP
    table_row = bh.to(tl.int64) * n_q_tiles + qt
    return qt, bh, batch, kv_head, bh.to(tl.int64) * N * HEAD_DIM, kv_head.to(tl.int64) * N * HEAD_DIM, table_row


@triton.jit
def _key_tile_range(qt, N, DocStart_b, DocEnd_b, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[first, end) key tiles that can meet query tile qt: causal and document bounds."""
    first_row = qt * BLOCK_M
    last_row = tl.minimum(first_row + BLOCK_M, N) - 1
    key_begin = 0
    key_end = N
    if CAUSAL:
        key_end = last_row + 1
    if HAS_DOCS:
        # Documents are contiguous: the tile's rows see keys from the start of its first row's
        # document to the end of its last row's document.
        key_begin = tl.load(DocStart_b + first_row)
        key_end = tl.minimum(key_end, tl.load(DocEnd_b + last_row))
    return key_begin // BLOCK_N, tl.cdiv(key_end, BLOCK_N)


@triton.jit
def _query_tile_docs(DocIds_b, first_row, N, HAS_DOCS: tl.constexpr, BLOCK_M: tl.constexpr):
    """Document ids of a query tile's first and last real rows (0, 0 without documents)."""
    if HAS_DOCS:
        doc_first = tl.load(DocIds_b + first_row)
        doc_last = tl.load(DocIds_b + tl.minimum(first_row + BLOCK_M, N) - 1)
    else:
        doc_first = 0
        doc_last = 0
    return doc_first, doc_last


# ----------------------------------------------------------------------------------------------
# Forward passes (each a loop over key tiles of one query tile)
# ----------------------------------------------------------------------------------------------


@triton.jit
def _tile_scores(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last, kt, N,
                 CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, TMA: tl.constexpr):
    """The raw scores q.k of key tile kt, -inf where masked (_raw_scores), and the tile's key
    positions: the start of every forward pass's loop body."""
    cols = kt * BLOCK_N + tl.arange(0, BLOCK_N)
    k = _load_head_tile(K_head, kv_head, 0, kt * BLOCK_N, N, HEAD_DIM, BLOCK_N, TMA)
    needs_mask = _tile_needs_mask(first_row, kt * BLOCK_N, N, doc_q_first, doc_q_last, DocIds_b, CAUSAL, HAS_DOCS,
                                  BLOCK_N)
    return _raw_scores(q, k, rows, cols, row_docs, DocIds_b, needs_mask, N, CAUSAL, HAS_DOCS, DOT_PRECISION), cols


@triton.jit
def _tile_row_max(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last, kt, N,
                  CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                  DOT_PRECISION: tl.constexpr, TMA: tl.constexpr):
    """Per-row maximum of the raw scores q.k of key tile kt (-inf where all masked)."""
    raw, _ = _tile_scores(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last, kt, N,
                          CAUSAL, HAS_DOCS, HEAD_DIM, BLOCK_N, DOT_PRECISION, TMA)
    return tl.max(raw, axis=1)


@triton.jit
def _seed_row_max(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last, kt_begin, kt_end, N,
                  CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, TMA: tl.constexpr):
    """Row maxima of the raw scores over the key tiles where they usually lie: the first allowed
    tile (where trained models keep attention sinks) and the three around the diagonal (RoPE
    favours near keys). A lower bound of the row maxima, equal to them for most query tiles."""
    seed_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    if kt_end > kt_begin:
        seed_max = _tile_row_max(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last,
                                 kt_begin, N, CAUSAL, HAS_DOCS, HEAD_DIM, BLOCK_N, DOT_PRECISION, TMA)
        diagonal = (first_row + BLOCK_M - 1) // BLOCK_N
        for offset in tl.static_range(3):
            kt = tl.minimum(tl.maximum(diagonal - 1 + offset, kt_begin), kt_end - 1)
            seed_max = tl.maximum(seed_max, _tile_row_max(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row,
                                                          doc_q_first, doc_q_last, kt, N, CAUSAL, HAS_DOCS, HEAD_DIM,
                                                          BLOCK_N, DOT_PRECISION, TMA))
    return seed_max


@triton.jit
def _tile_gap(row_max, gap_ref):
    """A tile's gap: the largest over the rows of (the row's largest z in the tile - the row's
    reference), -inf for a tile without an allowed entry. Rows with reference +inf (padding) are
    left out; a reference of -inf (a row with no seed entry) gives +inf wherever the row has one.

    The reference is each row's seed threshold (SEED_START) or 0 (then the gap is the tile's
    maximum z). Against _gap_threshold of the rows' lower bounds of tau, one number per tile then
    makes a per-row test: every row's largest z in the tile is at or below its own bound, where the
    tile's maximum against the rows' lowest bound makes a per-tile one (docs/kernels.md "Seed gaps")."""
    # (a finite maximum minus a reference of +inf is -inf: padding rows need no test of their own;
    # rows without an entry subtract from 0, so that -inf - -inf never makes a NaN)
    has_entry = row_max > float("-inf")
    gap = tl.where(has_entry, tl.where(has_entry, row_max, 0.0) - gap_ref, float("-inf"))
    return tl.max(gap, axis=0)


@triton.jit
def _gap_threshold(bound, gap_ref):
    """The smallest over the rows of (bound - reference), rows with reference +inf left out: a tile
    whose gap (_tile_gap) is at or below it has every row's largest z at or below the row's bound."""
    counted = gap_ref < float("inf")
    # (the left-out rows subtract 0, so that inf - inf never makes a NaN)
    return tl.min(tl.where(counted, bound - tl.where(counted, gap_ref, 0.0), float("inf")), axis=0)


@triton.jit
def _dense_pass(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last, kt_begin, kt_end,
                TileReach_row, N, z_scale, power, bin_shift, gap_ref, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_BINS: tl.constexpr,
                ALPHA_MODE: tl.constexpr, SEED_START: tl.constexpr, DOT_PRECISION: tl.constexpr, TMA: tl.constexpr):
    """Row maxima of z and every tile's gap (stored, _tile_gap); counts tiles with an allowed entry;
    and, over the tiles that can hold a z above bin_shift, either the histogram of y = z - bin_shift
    (as _histogram_pass) or, with SEED_START, the power sums of u = [z - bin_shift]_+ (as _refine_pass).

    The histogram is the one the bracket needs when bin_shift = row maxima - 1, which the caller
    can only guess (from _seed_row_max) before this pass; it checks the guess afterwards. The power
    sums give a Halley step from bin_shift, a lower bound of tau there (_seed_threshold)."""
    raw_row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    n_allowed = 0
    counts = tl.zeros([BLOCK_M, NUM_BINS], dtype=tl.int32)
    mass = tl.zeros([BLOCK_M], dtype=tl.float32)
    slope = tl.zeros([BLOCK_M], dtype=tl.float32)
    curvature = tl.zeros([BLOCK_M], dtype=tl.float32)
    shift_times_bins = bin_shift * NUM_BINS
    # A tile whose every row's maximum is at or below the row's shift adds to no bin and no sum.
    bin_floor = _gap_threshold(bin_shift, gap_ref)
    for kt in range(kt_begin, kt_end):
        raw, _ = _tile_scores(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last, kt, N,
                              CAUSAL, HAS_DOCS, HEAD_DIM, BLOCK_N, DOT_PRECISION, TMA)
        tile_row_max = tl.max(raw, axis=1)
        raw_row_max = tl.maximum(raw_row_max, tile_row_max)
        tile_gap = _tile_gap(tile_row_max * z_scale, gap_ref)
        tl.store(TileReach_row + kt, tile_gap)
        n_allowed += (tile_gap > float("-inf")).to(tl.int32)
        if tile_gap >= bin_floor:
            if SEED_START:
                # u saturates at 1 where a row's maximum lies outside the seed tiles; the caller
                # discards these sums there (seeds_missed).
                u = _tau.gap_below_one(raw * z_scale - bin_shift[:, None])
                tile_mass, tile_slope, tile_curvature = _tau.power_sums(u, power, ALPHA_MODE)
                mass += tile_mass
                slope += tile_slope
                curvature += tile_curvature
            else:
                counts += _tau.histogram_rows(raw * (z_scale * NUM_BINS) - shift_times_bins[:, None], NUM_BINS)
    return raw_row_max * z_scale, n_allowed, counts, mass, slope, curvature


@triton.jit
def _seed_threshold(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last, kt_begin, kt_end,
                    seed_max, TileList_row, N, z_scale, power, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_BINS: tl.constexpr,
                    ALPHA_MODE: tl.constexpr, DOT_PRECISION: tl.constexpr, TMA: tl.constexpr):
    """Per row, a lower bound of tau from the seed tiles alone (-inf for a row without a seed entry).

    Adding elements to a row only raises its threshold, so the threshold of the seed tiles' scores
    is at most tau, and so is the lower end of any bracket around it. It is found as tau is: the
    histogram bracket, then one Halley pass, over the distinct seed tiles (written to the front of
    the tile list, which the candidates overwrite later). Where the seeds hold most of the mass, as
    the sinks and the near keys do in trained models, this bound lies close to tau: the dense
    pass's power sums there take a Halley step that often leaves only the final pass to do
    (docs/kernels.md, "Seed threshold")."""
    shift = tl.where((rows < N) & (seed_max > float("-inf")), seed_max - 1.0, float("inf"))
    # The distinct seed tiles: the first allowed one and those around the diagonal. _seed_row_max
    # clamps into the range instead, which may repeat a tile (harmless for a maximum, not for a sum)
    # or, with BLOCK_M >= 2 BLOCK_N on a partial last query tile, take the last key tile, which is
    # left out here: then the shift may come from a tile not binned, and the bound falls back to
    # about m - 1, still a lower bound.
    diagonal = (first_row + BLOCK_M - 1) // BLOCK_N
    slots = tl.arange(0, 4)
    kts = tl.where(slots == 0, kt_begin, diagonal - 2 + slots)
    is_seed = (kts >= kt_begin) & (kts < kt_end) & ((slots == 0) | (kts > kt_begin))
    flags = is_seed.to(tl.int32)
    tl.store(TileList_row + tl.cumsum(flags, axis=0) - 1, kts, mask=is_seed)
    n_seeds = tl.sum(flags, axis=0)
    tl.debug_barrier()  # the list was stored by whichever thread held each slot
    counts = _histogram_pass(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last, shift,
                             TileList_row, n_seeds, N, z_scale, CAUSAL, HAS_DOCS, HEAD_DIM, BLOCK_M, BLOCK_N, NUM_BINS,
                             DOT_PRECISION, TMA)
    lo, hi = _tau.bracket_from_histogram(counts, power, ALPHA_MODE, NUM_BINS)
    t = 0.5 * (lo + hi)
    mass, slope, curvature = _refine_pass(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first,
                                          doc_q_last, shift + t, TileList_row, n_seeds, N, z_scale, power, CAUSAL,
                                          HAS_DOCS, HEAD_DIM, BLOCK_M, BLOCK_N, ALPHA_MODE, DOT_PRECISION, TMA)
    t, lo, hi = _tau.halley_update(t, lo, hi, mass, slope, curvature)
    tl.debug_barrier()  # every thread has read the seed list before the candidates overwrite it
    return tl.where(shift < float("inf"), shift + lo, float("-inf"))


@triton.jit
def _start_from_sums(t_sums, mass, slope, curvature, solving, stop_residual, straight_residual,
                     PUSH: tl.constexpr):
    """The bracket and first Halley step from power sums taken at t_sums, a lower bound of t (the
    seed threshold, in the shifted units where t is in [0, 1)); mass(t_sums) >= 1 there.

    The bracket: [max(t_sums, 0), 1], its upper end lowered (alpha = 1.5) to the smaller root of the
    quadratic that the sums give on their support S: sum_S (u - d)^2 = 1. That quadratic is at
    least the mass at every t >= t_sums (the elements of S below t add (u - d)^2 > 0 to it and
    nothing to the mass), so its root is at least tau. Returns t, lo, hi, whether that step is the
    last one (_tau.all_converged) and whether the next pass can be the last (residual within
    straight_residual, docs/kernels.md "Seed threshold"). Unless that step is the last one, t is
    moved up by PUSH * e^1.5 * (t - max(t_sums, 0)), e = mass - 1 (START_PUSH; 0 leaves the Halley
    step)."""
    # Both ends get a margin for fp32 rounding: where no element leaves the support between t_sums
    # and tau (tied scores), the root is tau itself and could round below it, clamping every later
    # step under tau; the seed threshold can round a few ulps above tau (found in review).
    lo = tl.maximum(t_sums - 1e-6, 0.0)
    s0 = 0.5 * curvature
    s1 = -0.5 * slope
    discriminant = s1 * s1 - s0 * (mass - 1.0)
    # the smaller root d, written as (mass - 1) / (s1 + sqrt(...)) to avoid cancellation
    denominator = s1 + tl.sqrt(tl.maximum(discriminant, 0.0))
    root = t_sums + (mass - 1.0) / tl.where(denominator > 0, denominator, 1.0)
    root = root + 1e-3 * (root - t_sums) + 1e-6
    hi = tl.where((discriminant >= 0) & (denominator > 0), tl.minimum(root, 1.0), 1.0)
    hi = tl.maximum(hi, lo)
    t, lo_step, hi = _tau.halley_update(t_sums, lo, hi, mass, slope, curvature)
    lo = tl.maximum(lo_step, lo)
    t = tl.minimum(tl.maximum(t, lo), hi)
    converged = _tau.all_converged(mass, solving, stop_residual).to(tl.int32)
    # The step undershoots tau the more, the larger the excess mass at t_sums (START_PUSH).
    excess = tl.where(solving & (mass > 1.0), mass - 1.0, 0.0)
    pushed = t + PUSH * excess * tl.sqrt(excess) * (t - tl.maximum(t_sums, 0.0))
    t = tl.where(converged != 0, t, tl.minimum(tl.maximum(pushed, lo), hi))
    straight = _tau.all_converged(mass, solving, straight_residual).to(tl.int32)
    return t, lo, hi, converged, straight


@triton.jit
def _compact_candidates(TileReach_row, TileList_row, row_max, gap_ref, kt_begin, kt_end, CHUNK: tl.constexpr):
    """Write the tiles where some row's largest z reaches its row_max - 1 to the list (by the tile
    gaps, _tile_gap); return their count.

    Any other tile has every score below its row's max - 1 <= tau: all zeros.
    """
    threshold = _gap_threshold(tl.where(row_max > float("-inf"), row_max - 1.0, float("inf")), gap_ref)
    # Tile maxima were stored by whichever thread held them; make them visible to all.
    tl.debug_barrier()
    n_candidates = 0
    for chunk_begin in range(kt_begin, kt_end, CHUNK):
        kts = chunk_begin + tl.arange(0, CHUNK)
        in_range = kts < kt_end
        tile_gap = tl.load(TileReach_row + kts, mask=in_range, other=float("-inf"))
        is_candidate = in_range & (tile_gap >= threshold)
        flags = is_candidate.to(tl.int32)
        slot = n_candidates + tl.cumsum(flags, axis=0) - 1
        tl.store(TileList_row + slot, kts, mask=is_candidate)
        n_candidates += tl.sum(flags, axis=0)
    tl.debug_barrier()
    return n_candidates


@triton.jit
def _drop_zero_tiles(TileList_row, TileReach_row, n_list, tau_lower_bound, gap_ref, CHUNK: tl.constexpr):
    """Drop (in place) the listed tiles where every row's largest score is below the row's lower
    bound of tau: all their probabilities are zero. Costs no matrix product: the dense pass
    stored the tile gaps (_tile_gap). Returns the new list length.
    """
    return _filter_list(TileList_row, TileReach_row, n_list, _gap_threshold(tau_lower_bound, gap_ref), False, CHUNK)


@triton.jit
def _filter_list(TileList_row, Values_row, n_list, threshold, BY_SLOT: tl.constexpr, CHUNK: tl.constexpr,
                 SLOT_OFFSET: tl.constexpr = 1.0):
    """Keep (in place, in order) the listed tiles whose value reaches threshold (BY_SLOT: exceeds
    it); return how many. The value is read per tile id (Values_row[kt]: the tiles' reach, _tile_gap) or, BY_SLOT, per list slot
    (what _record_slot_max stored: int32 bits of max(value + SLOT_OFFSET, 0), _encode_gap)."""
    if BY_SLOT:
        tl.debug_barrier()  # the slots were written by whichever thread held the row
    n_kept = 0
    for chunk_begin in range(0, n_list, CHUNK):
        slots = chunk_begin + tl.arange(0, CHUNK)
        in_list = slots < n_list
        kts = tl.load(TileList_row + slots, mask=in_list, other=0)
        if BY_SLOT:
            # .cg: the atomics went to L2; a line another program brought into L1 may be stale
            encoded = tl.load(Values_row + slots, mask=in_list, other=0, cache_modifier=".cg")
            value = encoded.to(tl.float32, bitcast=True) - SLOT_OFFSET
        else:
            value = tl.load(Values_row + kts, mask=in_list, other=float("-inf"))
        if BY_SLOT:
            keep = value > threshold
        else:
            # A tile gap and the threshold are both differences against the rows' references, each
            # rounded: where a row's largest z exceeds its bound, its gap rounds to at least the
            # threshold, never below; so ties stay (a reference far below the scores, e.g. seed
            # tiles scoring -5e5, leaves an ulp of 0.03 that would swallow small margins).
            keep = value >= threshold
        flags = (in_list & keep).to(tl.int32)
        # Every thread must have read this chunk before any overwrites it.
        tl.debug_barrier()
        tl.store(TileList_row + n_kept + tl.cumsum(flags, axis=0) - 1, kts, mask=flags != 0)
        n_kept += tl.sum(flags, axis=0)
    tl.debug_barrier()
    return n_kept


@triton.jit
def _histogram_pass(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last, shift,
                    TileList_row, n_list, N, z_scale, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_BINS: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, TMA: tl.constexpr):
    """Per-row histogram of y = z - shift over the listed tiles.

    The list is not pruned here: an exact per-tile test (some row with y >= 0) would cost a
    cross-warp reduction per tile, and the caller's _drop_zero_tiles prunes from the stored tile
    maxima right after, for free (measured, docs/kernels.md)."""
    shift_times_bins = shift * NUM_BINS
    counts = tl.zeros([BLOCK_M, NUM_BINS], dtype=tl.int32)
    for i in range(0, n_list):
        kt = tl.load(TileList_row + i)
        raw, _ = _tile_scores(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last, kt, N,
                              CAUSAL, HAS_DOCS, HEAD_DIM, BLOCK_N, DOT_PRECISION, TMA)
        counts += _tau.histogram_rows(raw * (z_scale * NUM_BINS) - shift_times_bins[:, None], NUM_BINS)
    return counts


@triton.jit
def _refine_pass(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last, threshold,
                 TileList_row, n_list, N, z_scale, power, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
                 HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ALPHA_MODE: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, TMA: tl.constexpr):
    """Per-row power sums of u = [z - threshold]_+ over the listed tiles (for a Halley step)."""
    mass = tl.zeros([BLOCK_M], dtype=tl.float32)
    slope = tl.zeros([BLOCK_M], dtype=tl.float32)
    curvature = tl.zeros([BLOCK_M], dtype=tl.float32)
    for i in range(0, n_list):
        kt = tl.load(TileList_row + i)
        raw, _ = _tile_scores(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last, kt, N,
                              CAUSAL, HAS_DOCS, HEAD_DIM, BLOCK_N, DOT_PRECISION, TMA)
        u = _tau.gap_below_one(raw * z_scale - threshold[:, None])
        tile_mass, tile_slope, tile_curvature = _tau.power_sums(u, power, ALPHA_MODE)
        mass += tile_mass
        slope += tile_slope
        curvature += tile_curvature
    return mass, slope, curvature


@triton.jit
def _output_pass(q, K_head, V_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last, tau,
                 TileList_row, TileGap_row, n_list, N, z_scale, power, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
                 HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ALPHA_MODE: tl.constexpr,
                 CHUNK: tl.constexpr, DOT_PRECISION: tl.constexpr, TMA: tl.constexpr):
    """sum_j p_ij v_j and the backward's weighted mean value (see _store_outputs) at the final tau;
    keeps (in place) the listed tiles that hold a non-zero probability and returns their count.

    A tile is non-zero where some row's sum of g is positive (g = p^(2 - alpha) > 0 exactly where
    p > 0, short of underflow, where p is zero too). Each row's sum goes to the tile's slot in
    TileGap_row (_record_slot_max) and the list is filtered after the loop, so the loop has no
    reduction across warps."""
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    acc_g = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    g_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    _zero_slots(TileGap_row, n_list, BLOCK_M)
    tl.debug_barrier()  # every slot is zero before any thread's atomic max reaches it
    for i in range(0, n_list):
        kt = tl.load(TileList_row + i)
        raw, cols = _tile_scores(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last, kt,
                                 N, CAUSAL, HAS_DOCS, HEAD_DIM, BLOCK_N, DOT_PRECISION, TMA)
        u = _tau.gap_below_one(raw * z_scale - tau[:, None])
        g = _tau.gradient_weight(u, power, ALPHA_MODE)
        p = g * u  # u^power, since g = u^(power - 1) (zero off the support)
        v = _load_head_tile(V_head, kv_head, 0, kt * BLOCK_N, N, HEAD_DIM, BLOCK_N, TMA)
        acc = _dot(p.to(v.dtype), v, acc, DOT_PRECISION)
        acc_g = _dot(g.to(v.dtype), v, acc_g, DOT_PRECISION)
        row_g = tl.sum(g, axis=1)
        g_sum += row_g
        _record_slot_max(TileGap_row, i, row_g, 0.0)
    n_nonzero = _filter_list(TileList_row, TileGap_row, n_list, 0.0, True, CHUNK, 0.0)
    return acc, acc_g, g_sum, n_nonzero


@triton.jit
def _store_outputs(Out_head, Obar_head, rows, N, out, g_values, g_sum, HEAD_DIM: tl.constexpr):
    """Store the output and obar = sum_j g_ij v_j / sum_j g_ij with g = p^(2 - alpha): the backward's
    delta_i = sum_j g_ij dP_ij / sum_j g_ij is then dO_i . obar_i, one product per row instead of
    a pass over the tiles (FlashAttention's delta = dO . O, with entmax's weights)."""
    dims = tl.arange(0, HEAD_DIM)
    offsets = rows[:, None] * HEAD_DIM + dims[None, :]
    obar = g_values / tl.where(g_sum > 0, g_sum, 1.0)[:, None]
    tl.store(Out_head + offsets, out.to(Out_head.dtype.element_ty), mask=rows[:, None] < N)
    tl.store(Obar_head + offsets, obar.to(Obar_head.dtype.element_ty), mask=rows[:, None] < N)


@triton.jit
def _mark_tiles(TileList_row, TileMask_row, n_list, n_k_tiles, CHUNK: tl.constexpr):
    """Write this query tile's row of the dense tile mask (read by the backward's key-tile lists):
    1 for every listed tile, 0 elsewhere. The whole row is written here, so the mask is allocated
    without a fill (one launch fewer per call). After the output loop rather than inside it:
    offline, ptxas then no longer warns that the loop's matrix products are serialized (C7515; no
    timing change was measured, docs/kernels.md)."""
    for chunk_begin in range(0, n_k_tiles, CHUNK):
        kts = chunk_begin + tl.arange(0, CHUNK)
        tl.store(TileMask_row + kts, tl.zeros([CHUNK], tl.int8), mask=kts < n_k_tiles)
    tl.debug_barrier()  # list entries were stored by whichever thread held them; so were the zeros
    for chunk_begin in range(0, n_list, CHUNK):
        slots = chunk_begin + tl.arange(0, CHUNK)
        in_list = slots < n_list
        kts = tl.load(TileList_row + slots, mask=in_list, other=0)
        tl.store(TileMask_row + kts, tl.full([CHUNK], 1, tl.int8), mask=in_list)


@triton.jit
def _refinement(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last, shift, t, lo, hi,
                solving, converged, TileList_row, TileReach_row, gap_ref, n_list, N, z_scale, power, stop_residual,
                CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, ALPHA_MODE: tl.constexpr, CHUNK: tl.constexpr, DOT_PRECISION: tl.constexpr,
                PASSES: tl.constexpr, TMA: tl.constexpr):
    """At most PASSES Halley passes (step 4), each followed by the tile dropping of step 5; returns
    t, the bracket, whether the last pass converged, and the list's length."""
    for _ in tl.static_range(PASSES):
        # Passes after the one that found every row of the tile within stop_residual of mass 1 are
        # skipped: the step taken from there is the last one needed (_tau.stop_residual). The
        # passes stay unrolled under a scalar guard: a runtime loop was 10% slower (docs/kernels.md).
        if converged == 0:
            mass, slope, curvature = _refine_pass(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first,
                                                  doc_q_last, shift + t, TileList_row, n_list, N, z_scale, power,
                                                  CAUSAL, HAS_DOCS, HEAD_DIM, BLOCK_M, BLOCK_N, ALPHA_MODE,
                                                  DOT_PRECISION, TMA)
            converged = _tau.all_converged(mass, solving, stop_residual).to(tl.int32)
            t, lo, hi = _tau.halley_update(t, lo, hi, mass, slope, curvature)
            n_list = _drop_zero_tiles(TileList_row, TileReach_row, n_list, shift + lo, gap_ref, CHUNK)
    return t, lo, hi, converged, n_list


@triton.jit
def _encode_gap(gap, OFFSET: tl.constexpr):
    """max(gap + OFFSET, 0) as int32 bits: non-negative floats order as their bits do, so an integer
    atomic max keeps the largest. With OFFSET 1, gaps below -1 all encode as 0; _keep_nonzero_tiles
    compares with steps far smaller than 1, so it never needs them apart. With OFFSET 0 a positive
    value keeps every bit: encoded > 0 exactly where the value is."""
    return tl.maximum(gap + OFFSET, 0.0).to(tl.int32, bitcast=True)


@triton.jit
def _record_slot_max(Slots_row, slot, row_values, OFFSET: tl.constexpr):
    """Slots_row[slot] = max over the rows of row_values (encoded, _encode_gap), as one relaxed
    atomic max per row: the rows live in different warps, and a plain maximum across them would
    cost a round trip through shared memory and two barriers in every tile of the caller's loop.
    The slots must be zero before (_zero_slots) and are read after a barrier, from L2
    (_filter_list)."""
    tl.atomic_max(Slots_row + slot + tl.zeros_like(row_values).to(tl.int32), _encode_gap(row_values, OFFSET),
                  sem="relaxed", scope="cta")


@triton.jit
def _zero_slots(Slots, n, CHUNK: tl.constexpr):
    for begin in range(0, n, CHUNK):
        offsets = begin + tl.arange(0, CHUNK)
        tl.store(Slots + offsets, tl.zeros([CHUNK], dtype=tl.int32), mask=offsets < n)


@triton.jit
def _final_pass(q, K_head, V_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last, threshold,
                TileList_row, TileGap_row, n_list, N, z_scale, power, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ALPHA_MODE: tl.constexpr,
                DOT_PRECISION: tl.constexpr, TMA: tl.constexpr):
    """A refinement pass (the power sums of _refine_pass) that also accumulates, around its own
    threshold, what the output needs at the next one: for u = [z - threshold]_+ on the support S,
    sum u^2 v (alpha = 1.5 only), sum u v and sum_S v. If the Halley step d taken from its sums is
    the last one needed (_tau.stop_residual), the output at tau = threshold + d is
    sum_S (u - d)^2 v = A2 - 2 d A1 + d^2 A0 (alpha = 1.5) or sum_S (u - d) v = A1 - d A0
    (sparsemax), exactly on S (_expanded_outputs), and the output pass is saved. What S misses,
    elements entering or leaving the support during that step, is at most the mass the early stop
    already allows.

    Records, per list slot, the tile's largest z - threshold (TileGap_row, int32, _encode_gap): once
    the step d is known, _keep_nonzero_tiles keeps the tiles that can hold a non-zero probability at
    threshold + d. Each row's maximum goes out as a relaxed atomic max, so the loop needs no
    reduction across warps (a barrier per tile) and no plain store.
    Returns the sums and the three accumulators.
    """
    mass = tl.zeros([BLOCK_M], dtype=tl.float32)
    slope = tl.zeros([BLOCK_M], dtype=tl.float32)
    curvature = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc_u2 = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    acc_support = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    _zero_slots(TileGap_row, n_list, BLOCK_M)
    tl.debug_barrier()  # every slot is zero before any thread's atomic max reaches it
    for i in range(0, n_list):
        kt = tl.load(TileList_row + i)
        raw, cols = _tile_scores(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last, kt,
                                 N, CAUSAL, HAS_DOCS, HEAD_DIM, BLOCK_N, DOT_PRECISION, TMA)
        gap = raw * z_scale - threshold[:, None]
        _record_slot_max(TileGap_row, i, tl.max(gap, axis=1), 1.0)
        # (Not _tau.gap_below_one: the gaps per score are needed here anyway, and taking the rows'
        # largest gaps from their largest raw scores instead made the output launch 3 % slower.)
        u = tl.maximum(gap, 0.0)
        tile_mass, tile_slope, tile_curvature = _tau.power_sums(u, power, ALPHA_MODE)
        mass += tile_mass
        slope += tile_slope
        curvature += tile_curvature
        v = _load_head_tile(V_head, kv_head, 0, kt * BLOCK_N, N, HEAD_DIM, BLOCK_N, TMA)
        if ALPHA_MODE == 1:
            acc_u2 = _dot((u * u).to(v.dtype), v, acc_u2, DOT_PRECISION)
        acc_u = _dot(u.to(v.dtype), v, acc_u, DOT_PRECISION)
        acc_support = _dot(_tau.support_indicator(u).to(v.dtype), v, acc_support, DOT_PRECISION)
    return mass, slope, curvature, acc_u2, acc_u, acc_support


@triton.jit
def _keep_nonzero_tiles(TileList_row, TileGap_row, n_list, step, solving, CHUNK: tl.constexpr):
    """Keep (in place) the listed tiles whose largest z - threshold (stored by _final_pass) exceeds
    the smallest step d among the solving rows: every other tile has z <= threshold + d, hence
    p = 0, in every row. Returns the new length. A superset of the non-zero tiles at threshold + d,
    tight because the last step is tiny."""
    smallest_step = tl.min(tl.where(solving, step, float("inf")), axis=0)
    return _filter_list(TileList_row, TileGap_row, n_list, smallest_step, True, CHUNK)


@triton.jit
def _expanded_outputs(acc_u2, acc_u, acc_support, slope, curvature, step, ALPHA_MODE: tl.constexpr):
    """The output and the weighted value sums of _store_outputs at threshold + step, from the
    accumulators of _final_pass at threshold (exact on that pass's support)."""
    d = step[:, None]
    if ALPHA_MODE == 1:
        out = acc_u2 - 2.0 * d * acc_u + d * d * acc_support
        g_values = acc_u - d * acc_support
        g_sum = -0.5 * slope - step * (0.5 * curvature)  # sum (u - d) on the support
    else:
        out = acc_u - d * acc_support
        g_values = acc_support
        g_sum = -slope  # the support's size
    return out, g_values, g_sum


@triton.jit
def _entmax_attention_tau_kernel(
    Q, K, DocIds, DocStart, DocEnd, TileReach, TileList, ListCount, AllowedCount, Tau, State, Converged,
    z_scale, power, stop_residual, straight_residual, N, n_q_tiles, n_k_tiles, n_rows_total, head_group,
    H: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
    ALPHA_MODE: tl.constexpr, NUM_BINS: tl.constexpr, N_ITER: tl.constexpr, CHUNK: tl.constexpr,
    FUSED_OUTPUT: tl.constexpr, SEED_START: tl.constexpr, DOT_PRECISION: tl.constexpr, TMA: tl.constexpr,
):
    """Forward, first launch: tau per row, and per query tile the list of key tiles that can hold a
    non-zero probability (steps 1-4 of the module docstring). With FUSED_OUTPUT it runs only the
    first refinement pass (N_ITER = 1) and leaves the solver's state (shift, t, bracket, whether that
    pass converged) in State and Converged for the output launch, instead of tau."""
    qt, bh, batch, kv_head, head_offset, kv_offset, table_row = _query_tile_program(N, n_q_tiles, head_group, H, GROUP,
                                                                                    HEAD_DIM)
    Q_head = Q + head_offset
    K_head = _head_source(K, kv_offset, TMA)
    DocIds_b = DocIds + batch.to(tl.int64) * N
    TileReach_row = TileReach + table_row * n_k_tiles
    TileList_row = TileList + table_row * n_k_tiles

    first_row = qt * BLOCK_M
    rows = first_row + tl.arange(0, BLOCK_M)
    q = _load_rows(Q_head, rows, N, HEAD_DIM)
    row_docs = _load_doc_ids(DocIds_b, rows, N, -2, HAS_DOCS)
    doc_q_first, doc_q_last = _query_tile_docs(DocIds_b, qt * BLOCK_M, N, HAS_DOCS, BLOCK_M)
    kt_begin, kt_end = _key_tile_range(qt, N, DocStart + batch.to(tl.int64) * N,
                                       DocEnd + batch.to(tl.int64) * N, CAUSAL, HAS_DOCS, BLOCK_M, BLOCK_N)

    # The histogram is binned during the dense pass against the row maxima of a few seed tiles.
    # Where those are the row maxima (the common case) that is the histogram the bracket needs, and
    # the separate histogram pass, a second QK^T over every candidate tile, is skipped. With
    # SEED_START (alpha = 1.5) the dense pass takes power sums at the seed tiles' own threshold
    # instead, a lower bound of tau (_seed_threshold; docs/kernels.md "Seed threshold").
    seed_max = _seed_row_max(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last, kt_begin,
                             kt_end, N, CAUSAL, HAS_DOCS, HEAD_DIM, BLOCK_M, BLOCK_N, DOT_PRECISION, TMA) * z_scale
    dense_shift = tl.where((rows < N) & (seed_max > float("-inf")), seed_max - 1.0, float("inf"))
    # The tile gaps' per-row reference (_tile_gap); padding rows past N (not masked: their scores
    # are 0) are left out by +inf.
    gap_ref = tl.where(rows < N, 0.0, float("inf"))
    if SEED_START:
        seed_tau = _seed_threshold(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last,
                                   kt_begin, kt_end, seed_max, TileList_row, N, z_scale, power, CAUSAL, HAS_DOCS,
                                   HEAD_DIM, BLOCK_M, BLOCK_N, NUM_BINS, ALPHA_MODE, DOT_PRECISION, TMA)
        dense_shift = tl.where(seed_tau > float("-inf"), seed_tau, float("inf"))
        # Gaps against the seed threshold, a lower bound of tau that varies with the row as tau does.
        gap_ref = tl.where(rows < N, seed_tau, float("inf"))
    row_max, n_allowed, counts, mass, slope, curvature = _dense_pass(
        q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last, kt_begin, kt_end,
        TileReach_row, N, z_scale, power, dense_shift, gap_ref, CAUSAL, HAS_DOCS, HEAD_DIM, BLOCK_M, BLOCK_N, NUM_BINS,
        ALPHA_MODE, SEED_START, DOT_PRECISION, TMA)
    # Padding rows past N were not masked (their scores are 0): drop them here.
    row_max = tl.where(rows < N, row_max, float("-inf"))
    n_list = _compact_candidates(TileReach_row, TileList_row, row_max, gap_ref, kt_begin, kt_end, CHUNK)

    # Solve in y = z - (m - 1), where t = tau - (m - 1) lies in [0, 1). Padding rows get
    # shift = +inf: every y is -inf there, so p = 0 and nothing is NaN.
    shift = tl.where(row_max > float("-inf"), row_max - 1.0, float("inf"))
    # Rows with a threshold to find (padding and fully masked rows have shift = +inf, mass 0).
    solving = (rows < N) & (shift < float("inf"))
    # A row whose maximum lies outside the seed tiles was binned against a lower shift: redo the
    # histogram for the tile. "Differs" rather than "is larger": should the compiled seed products
    # round differently from the dense pass's, the histogram is redone rather than off by an ulp.
    # (With SEED_START the sums stay valid, but their bracket, [max(seed threshold, m - 1), ...],
    # can be far wider than a histogram's; such tiles take the histogram's.)
    seeds_missed = tl.max(((rows < N) & (row_max != seed_max)).to(tl.int32), axis=0)
    if seeds_missed > 0:
        counts = _histogram_pass(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last,
                                 shift, TileList_row, n_list, N, z_scale, CAUSAL, HAS_DOCS, HEAD_DIM, BLOCK_M, BLOCK_N,
                                 NUM_BINS, DOT_PRECISION, TMA)
    lo, hi = _tau.bracket_from_histogram(counts, power, ALPHA_MODE, NUM_BINS)
    t = 0.5 * (lo + hi)
    converged = tl.zeros([], dtype=tl.int32)  # a scalar flag (an int: the frontend wants one type)
    # Whether the next pass can be the last: then, with FUSED_OUTPUT, it is the output launch's
    # final pass and no refinement pass runs here.
    straight = tl.zeros([], dtype=tl.int32)
    if SEED_START:
        # the sums' point in the shifted units (0 where a row has no sums: from_sums is off there)
        has_sums = solving & (dense_shift < float("inf"))
        t_sums = tl.where(has_sums, dense_shift, 0.0) - tl.where(has_sums, shift, 0.0)
        sums_t, sums_lo, sums_hi, sums_converged, sums_straight = _start_from_sums(
            t_sums, mass, slope, curvature, solving, stop_residual, straight_residual, START_PUSH)
        from_sums = seeds_missed == 0
        t = tl.where(from_sums, sums_t, t)
        lo = tl.where(from_sums, sums_lo, lo)
        hi = tl.where(from_sums, sums_hi, hi)
        converged = tl.where(from_sums, sums_converged, converged)
        if FUSED_OUTPUT:
            straight = tl.where(from_sums, sums_straight, straight)
    n_list = _drop_zero_tiles(TileList_row, TileReach_row, n_list, shift + lo, gap_ref, CHUNK)
    # A tile sent straight on runs no pass here: _refinement sees it as converged.
    hold = tl.maximum(converged, straight)
    t, lo, hi, refined, n_list = _refinement(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first,
                                             doc_q_last, shift, t, lo, hi, solving, hold, TileList_row, TileReach_row,
                                             gap_ref, n_list, N, z_scale, power, stop_residual, CAUSAL, HAS_DOCS,
                                             HEAD_DIM, BLOCK_M, BLOCK_N, ALPHA_MODE, CHUNK, DOT_PRECISION, N_ITER, TMA)
    converged = tl.where(straight != 0, converged, refined)

    if FUSED_OUTPUT:
        # The output launch goes on from here (its FUSED_OUTPUT branch): it needs the solver's state.
        state_offsets = bh.to(tl.int64) * N + rows
        tl.store(State + state_offsets, shift, mask=rows < N)
        tl.store(State + n_rows_total + state_offsets, t, mask=rows < N)
        tl.store(State + 2 * n_rows_total + state_offsets, lo, mask=rows < N)
        tl.store(State + 3 * n_rows_total + state_offsets, hi, mask=rows < N)
        tl.store(State + 4 * n_rows_total + state_offsets, gap_ref, mask=rows < N)
        tl.store(Converged + table_row, converged)
    else:
        # Padding rows keep tau = +inf (shift), so the output kernel needs no row mask either.
        tl.store(Tau + bh.to(tl.int64) * N + rows, shift + t, mask=rows < N)
    tl.store(ListCount + table_row, n_list)
    tl.store(AllowedCount + table_row, n_allowed)


@triton.jit
def _entmax_attention_output_kernel(
    Q, K, V, Out, Obar, DocIds, TileReach, TileList, TileMask, NonzeroCount, Tau, State, Converged, TileGap,
    z_scale, power, stop_residual, N, n_q_tiles, n_k_tiles, n_rows_total, head_group,
    H: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
    ALPHA_MODE: tl.constexpr, N_ITER: tl.constexpr, CHUNK: tl.constexpr, FUSED_OUTPUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, TMA: tl.constexpr,
):
    """Forward, second launch: the output pass over the tiles the first launch listed. A launch
    of its own, so that its two [BLOCK_M, HEAD_DIM] accumulators do not raise the register count of
    the threshold passes, which then run with more programs per multiprocessor (docs/kernels.md).
    NonzeroCount holds the list's length on entry and the non-zero tiles' count on exit.

    With FUSED_OUTPUT the first launch stopped after one refinement pass: where that pass did not
    converge, the second one is _final_pass, which also gathers the output, so that no output pass
    follows when it converges (nearly always). Otherwise the remaining passes and the output pass
    run here. The list left for the backward after a converged final pass is a superset of the
    non-zero tiles (_keep_nonzero_tiles; exact only without FUSED_OUTPUT, which return_stats asks
    for)."""
    qt, bh, batch, kv_head, head_offset, kv_offset, table_row = _query_tile_program(N, n_q_tiles, head_group, H, GROUP,
                                                                                    HEAD_DIM)
    K_head = _head_source(K, kv_offset, TMA)
    V_head = _head_source(V, kv_offset, TMA)
    DocIds_b = DocIds + batch.to(tl.int64) * N
    TileList_row = TileList + table_row * n_k_tiles

    first_row = qt * BLOCK_M
    rows = first_row + tl.arange(0, BLOCK_M)
    q = _load_rows(Q + head_offset, rows, N, HEAD_DIM)
    row_docs = _load_doc_ids(DocIds_b, rows, N, -2, HAS_DOCS)
    doc_q_first, doc_q_last = _query_tile_docs(DocIds_b, first_row, N, HAS_DOCS, BLOCK_M)
    n_list = tl.load(NonzeroCount + table_row)
    row_offsets = bh.to(tl.int64) * N + rows
    stored = tl.zeros([], dtype=tl.int32)
    if FUSED_OUTPUT:
        shift = tl.load(State + row_offsets, mask=rows < N, other=float("inf"))
        t = tl.load(State + n_rows_total + row_offsets, mask=rows < N, other=0.0)
        lo = tl.load(State + 2 * n_rows_total + row_offsets, mask=rows < N, other=0.0)
        hi = tl.load(State + 3 * n_rows_total + row_offsets, mask=rows < N, other=0.0)
        gap_ref = tl.load(State + 4 * n_rows_total + row_offsets, mask=rows < N, other=float("inf"))
        converged = tl.load(Converged + table_row)
        solving = (rows < N) & (shift < float("inf"))
        if converged == 0:
            mass, slope, curvature, acc_u2, acc_u, acc_support = _final_pass(
                q, K_head, V_head, kv_head, DocIds_b, row_docs, rows, first_row, doc_q_first, doc_q_last, shift + t,
                TileList_row, TileGap + table_row * n_k_tiles, n_list, N, z_scale, power, CAUSAL, HAS_DOCS, HEAD_DIM,
                BLOCK_M, BLOCK_N, ALPHA_MODE, DOT_PRECISION, TMA)
            converged = _tau.all_converged(mass, solving, stop_residual).to(tl.int32)
            t_next, lo, hi = _tau.halley_update(t, lo, hi, mass, slope, curvature)
            step = tl.where(solving, t_next - t, 0.0)
            TileReach_row = TileReach + table_row * n_k_tiles
            if converged != 0:
                out, g_values, g_sum = _expanded_outputs(acc_u2, acc_u, acc_support, slope, curvature, step,
                                                         ALPHA_MODE)
                _store_outputs(Out + head_offset, Obar + head_offset, rows, N, out, g_values, g_sum, HEAD_DIM)
                stored = converged
                n_list = _keep_nonzero_tiles(TileList_row, TileGap + table_row * n_k_tiles, n_list, step, solving,
                                             CHUNK)
            else:
                n_list = _drop_zero_tiles(TileList_row, TileReach_row, n_list, shift + lo, gap_ref, CHUNK)
            t = t_next
            t, lo, hi, converged, n_list = _refinement(q, K_head, kv_head, DocIds_b, row_docs, rows, first_row,
                                                       doc_q_first, doc_q_last, shift, t, lo, hi, solving, converged,
                                                       TileList_row, TileReach_row, gap_ref, n_list, N, z_scale, power,
                                                       stop_residual, CAUSAL, HAS_DOCS, HEAD_DIM, BLOCK_M, BLOCK_N,
                                                       ALPHA_MODE, CHUNK, DOT_PRECISION, N_ITER - 2, TMA)
        tau = shift + t
        tl.store(Tau + row_offsets, tau, mask=rows < N)
    else:
        tau = tl.load(Tau + row_offsets, mask=rows < N, other=float("inf"))
    n_nonzero = n_list
    if stored == 0:
        out, g_values, g_sum, n_nonzero = _output_pass(q, K_head, V_head, kv_head, DocIds_b, row_docs, rows, first_row,
                                                       doc_q_first, doc_q_last, tau, TileList_row,
                                                       TileGap + table_row * n_k_tiles, n_list, N, z_scale, power,
                                                       CAUSAL, HAS_DOCS, HEAD_DIM, BLOCK_M, BLOCK_N, ALPHA_MODE, CHUNK,
                                                       DOT_PRECISION, TMA)
        _store_outputs(Out + head_offset, Obar + head_offset, rows, N, out, g_values, g_sum, HEAD_DIM)
    _mark_tiles(TileList_row, TileMask + table_row * n_k_tiles, n_nonzero, n_k_tiles, CHUNK)
    tl.store(NonzeroCount + table_row, n_nonzero)


# ----------------------------------------------------------------------------------------------
# Backward kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _backward_gap(y, HEAD_DIM: tl.constexpr):
    """u = [y]_+ for y = z - tau in the backward kernels. As one saturated multiply-add
    (_tau.gap_below_one) the dQ kernel took 6-7 % less time and the dK/dV kernel 1-3 % at head dim
    64 on an H200, but at 128 the dK/dV kernel took 1-3 % more (its 255 registers spill more) and the
    dQ kernel 0-2 % more, so there both keep max(y, 0) (docs/benchmarks.md §1q)."""
    if HEAD_DIM <= 64:
        u = _tau.gap_below_one(y)
    else:
        u = tl.maximum(y, 0.0)
    return u


@triton.jit
def _entmax_attention_bwd_dq_kernel(
    Q, K, V, DO, Obar, DQ, TauDelta, Tau, DocIds, TileList, NonzeroCount,
    scale, z_scale, power, N, n_q_tiles, n_k_tiles, head_group,
    H: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
    ALPHA_MODE: tl.constexpr, DOT_PRECISION: tl.constexpr, TMA: tl.constexpr,
):
    """dQ row-wise over the non-zero tiles, and delta_i = sum_j g dP / sum_j g for the dK/dV kernel.
    With TMA, K and V are tensor descriptors (_load_head_tile).

    dL/ds_ij = g_ij (dP_ij - delta_i) with g = p^(2 - alpha). delta_i = dO_i . obar_i, where the
    forward stored obar_i = sum_j g_ij v_j / sum_j g_ij, so one pass over the tiles suffices.
    """
    qt, bh, batch, kv_head, head_offset, kv_offset, table_row = _query_tile_program(N, n_q_tiles, head_group, H, GROUP,
                                                                                    HEAD_DIM)
    DocIds_b = DocIds + batch.to(tl.int64) * N
    TileList_row = TileList + table_row * n_k_tiles

    rows = qt * BLOCK_M + tl.arange(0, BLOCK_M)
    q = _load_rows(Q + head_offset, rows, N, HEAD_DIM)
    do = _load_rows(DO + head_offset, rows, N, HEAD_DIM)
    obar = _load_rows(Obar + head_offset, rows, N, HEAD_DIM)
    delta = tl.sum(do.to(tl.float32) * obar.to(tl.float32), axis=1)
    row_docs = _load_doc_ids(DocIds_b, rows, N, -2, HAS_DOCS)
    doc_q_first, doc_q_last = _query_tile_docs(DocIds_b, qt * BLOCK_M, N, HAS_DOCS, BLOCK_M)
    tau = tl.load(Tau + bh.to(tl.int64) * N + rows, mask=rows < N, other=float("inf"))
    n_list = tl.load(NonzeroCount + table_row)

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for i in range(0, n_list):
        kt = tl.load(TileList_row + i)
        cols = kt * BLOCK_N + tl.arange(0, BLOCK_N)
        k = _load_head_tile(K, kv_head, kv_offset, kt * BLOCK_N, N, HEAD_DIM, BLOCK_N, TMA)
        v = _load_head_tile(V, kv_head, kv_offset, kt * BLOCK_N, N, HEAD_DIM, BLOCK_N, TMA)
        needs_mask = _tile_needs_mask(qt * BLOCK_M, kt * BLOCK_N, N, doc_q_first, doc_q_last, DocIds_b, CAUSAL,
                                      HAS_DOCS, BLOCK_N)
        raw = _raw_scores(q, k, rows, cols, row_docs, DocIds_b, needs_mask, N, CAUSAL, HAS_DOCS, DOT_PRECISION)
        g = _tau.gradient_weight(_backward_gap(raw * z_scale - tau[:, None], HEAD_DIM), power, ALPHA_MODE)
        dp = _dot(do, tl.trans(v), None, DOT_PRECISION)
        ds = g * (dp - delta[:, None])
        acc = _dot(ds.to(k.dtype), k, acc, DOT_PRECISION)

    dims = tl.arange(0, HEAD_DIM)
    tl.store(DQ + head_offset + rows[:, None] * HEAD_DIM + dims[None, :],
             (acc * scale).to(DQ.dtype.element_ty), mask=rows[:, None] < N)
    # tau and delta side by side for the dK/dV kernel: one 8-byte load per query row there.
    pair_offsets = (bh.to(tl.int64) * N + rows) * 2
    tl.store(TauDelta + pair_offsets, tau, mask=rows < N)
    tl.store(TauDelta + pair_offsets + 1, delta, mask=rows < N)


@triton.jit
def _entmax_attention_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, TauDelta, DocIds, KeyTileList, KeyTileCount,
    scale, z_scale, power, N, n_q_tiles, n_k_tiles,
    H: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
    ALPHA_MODE: tl.constexpr, DOT_PRECISION: tl.constexpr, TMA: tl.constexpr,
):
    """dK, dV column-wise: one program per (key tile, kv head) sums over the GROUP query heads that
    share the kv head, in registers, visiting only the query tiles where this key tile is non-zero.
    With TMA, Q and DO are tensor descriptors (_load_head_tile).
    """
    kt = tl.program_id(0)
    bhk = tl.program_id(1)
    H_KV: tl.constexpr = H // GROUP
    batch = bhk // H_KV
    kv_offset = bhk.to(tl.int64) * N * HEAD_DIM
    DocIds_b = DocIds + batch.to(tl.int64) * N

    cols = kt * BLOCK_N + tl.arange(0, BLOCK_N)
    k = _load_rows(K + kv_offset, cols, N, HEAD_DIM)
    v = _load_rows(V + kv_offset, cols, N, HEAD_DIM)
    col_docs = _load_doc_ids(DocIds_b, cols, N, -1, HAS_DOCS)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    for member in range(0, GROUP):
        bh = batch * H + (bhk % H_KV) * GROUP + member
        head_offset = bh.to(tl.int64) * N * HEAD_DIM
        list_row = bh.to(tl.int64) * n_k_tiles + kt
        n_list = tl.load(KeyTileCount + list_row)
        for i in range(0, n_list):
            qt = tl.load(KeyTileList + list_row * n_q_tiles + i)
            rows = qt * BLOCK_M + tl.arange(0, BLOCK_M)
            q = _load_head_tile(Q, bh, head_offset, qt * BLOCK_M, N, HEAD_DIM, BLOCK_M, TMA)
            do = _load_head_tile(DO, bh, head_offset, qt * BLOCK_M, N, HEAD_DIM, BLOCK_M, TMA)
            # Transposed tile: [BLOCK_N keys, BLOCK_M queries]. tau and delta vary along its
            # columns, so each thread holds 16 of each per tile; loaded with a mask they cost more
            # instructions than the tile's four products. Rows past N read row N - 1's values
            # instead, and the last query tile always takes the mask below, which gives those
            # rows p = 0 and dS = 0 whatever tau and delta they read.
            inside = tl.minimum(rows, N - 1)
            pair_offsets = (bh.to(tl.int64) * N + inside) * 2
            tau, delta = tl.split(tl.load(TauDelta + pair_offsets[:, None] + tl.arange(0, 2)[None, :]))
            raw_t = _dot(k, tl.trans(q), None, DOT_PRECISION)
            doc_q_first, doc_q_last = _query_tile_docs(DocIds_b, qt * BLOCK_M, N, HAS_DOCS, BLOCK_M)
            past_end = qt * BLOCK_M + BLOCK_M > N
            if past_end | _tile_needs_mask(qt * BLOCK_M, kt * BLOCK_N, N, doc_q_first, doc_q_last, DocIds_b, CAUSAL,
                                           HAS_DOCS, BLOCK_N):
                row_docs = _load_doc_ids(DocIds_b, rows, N, -2, HAS_DOCS)
                allowed = _allowed(rows[None, :], cols[:, None], row_docs[None, :], col_docs[:, None], N,
                                   CAUSAL, HAS_DOCS)
                raw_t = tl.where(allowed, raw_t, float("-inf"))
            u_t = _backward_gap(raw_t * z_scale - tau[None, :], HEAD_DIM)
            p_t = _tau.probability(u_t, power, ALPHA_MODE)
            g_t = _tau.gradient_weight(u_t, power, ALPHA_MODE)
            dv = _dot(p_t.to(do.dtype), do, dv, DOT_PRECISION)
            dp_t = _dot(v, tl.trans(do), None, DOT_PRECISION)
            ds_t = g_t * (dp_t - delta[None, :])
            dk = _dot(ds_t.to(q.dtype), q, dk, DOT_PRECISION)

    dims = tl.arange(0, HEAD_DIM)
    out_offsets = kv_offset + cols[:, None] * HEAD_DIM + dims[None, :]
    tl.store(DK + out_offsets, (dk * scale).to(DK.dtype.element_ty), mask=cols[:, None] < N)
    tl.store(DV + out_offsets, dv.to(DV.dtype.element_ty), mask=cols[:, None] < N)


@triton.jit
def _key_tile_lists_kernel(TileMask, KeyTileList, KeyTileCount, n_q_tiles, n_k_tiles, CHUNK: tl.constexpr):
    """Transpose the forward's [query tile, key tile] non-zero mask into per-key-tile lists."""
    kt = tl.program_id(0)
    bh = tl.program_id(1)
    list_row = bh.to(tl.int64) * n_k_tiles + kt
    count = 0
    for chunk_begin in range(0, n_q_tiles, CHUNK):
        qts = chunk_begin + tl.arange(0, CHUNK)
        in_range = qts < n_q_tiles
        flags = tl.load(TileMask + (bh.to(tl.int64) * n_q_tiles + qts) * n_k_tiles + kt,
                        mask=in_range, other=0).to(tl.int32)
        slot = count + tl.cumsum(flags, axis=0) - 1
        tl.store(KeyTileList + list_row * n_q_tiles + slot, qts, mask=flags > 0)
        count += tl.sum(flags, axis=0)
    tl.store(KeyTileCount + list_row, count)


# ----------------------------------------------------------------------------------------------
# Python side: validation, launch configuration, autograd
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LaunchConfig:
    alpha: float
    causal: bool
    scale: float
    n_iter: int
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    # Whether the output launch runs the second refinement pass and gathers the output with it
    # (_final_pass); off where the stats must be exact and where it does not apply (_fuses_output).
    fused_output: bool = False
    # The kernels ("forward", "bwd_dq", "bwd_dkdv") that read their per-tile operands through tensor
    # descriptors (_load_head_tile, _uses_tma_loads).
    tma_loads: frozenset = frozenset()

    @property
    def z_scale(self) -> float:
        return (self.alpha - 1.0) * self.scale

    @property
    def power(self) -> float:
        return 1.0 / (self.alpha - 1.0)


def is_interpreting() -> bool:
    """True when the kernels were built for Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return type(_entmax_attention_tau_kernel).__name__ == "InterpretedFunction"


def require_runnable_device(device: torch.device, caller: str) -> None:
    """Raise a clear error when the Triton kernels cannot run on `device`."""
    if device.type == "cuda":
        return
    if device.type == "cpu" and is_interpreting():
        return
    raise RuntimeError(
        f"{caller}: the Triton kernels need CUDA tensors, got tensors on '{device}'. On CPU use "
        f"kernels.reference (exact PyTorch), or set TRITON_INTERPRET=1 in the environment before "
        f"importing kernels to run these kernels in Triton's (slow) interpreter."
    )


def _tau_launch_options(config: _LaunchConfig, head_dim: int, dtype: torch.dtype) -> dict:
    """The threshold launch's register cap (ptxas's maxnreg) and stages where they apply, else {}.

    Both are for bf16 or fp16 inputs, alpha = 1.5 with the seed start and 64 x 64 tiles with 4
    warps, where four programs per multiprocessor fit under the cap: at head dim 64 with the fused
    final pass (measured, H200), and at head dim 128, whose launch runs every refinement pass, with
    2 stages so that four programs also fit in shared memory (49 KiB each instead of 64; measured,
    H200: the launch 2-6 % faster, 2 bytes spilled, docs/benchmarks.md section 1l). fp32 tiles do
    not fit the cap: offline they spill thousands of bytes under it (docs/benchmarks.md section 1n)."""
    measured_build = (_starts_from_seeds(config.alpha) and dtype.itemsize == 2
                      and (config.block_m, config.block_n, config.num_warps) == (64, 64, 4))
    if measured_build and head_dim == 64 and config.fused_output:
        return {"maxnreg": _TAU_LAUNCH_MAX_REGISTERS}
    if measured_build and head_dim == 128 and not config.fused_output:
        return {"maxnreg": _TAU_LAUNCH_MAX_REGISTERS, "num_stages": 2}
    return {}


def _default_tiles(head_dim: int, device: torch.device) -> tuple[int, int, int, int]:
    """(block_m, block_n, num_warps, num_stages) for a head dim on a device.

    64 x 64 tiles with 4 warps and 3 pipeline stages were the fastest of the shapes tried on an
    H100 at head_dim 64 (docs/kernels.md); 128-wide tiles coarsen the zero-tile mask.
    """
    if device.type != "cuda":
        return 32, 32, 4, 1
    if head_dim <= 128:
        return 64, 64, 4, 3
    return 32, 32, 4, 2


# The fused final pass holds three [BLOCK_M, head_dim] fp32 accumulators; above head_dim 64 the
# output launch would spill (scripts/offline_ptxas.py), so larger heads keep the plain passes.
_FUSED_OUTPUT_MAX_HEAD_DIM = 64


def _starts_from_seeds(alpha: float) -> bool:
    """Whether the threshold launch starts from the seed tiles' threshold (power sums in the dense
    pass, _seed_threshold) instead of the dense pass's histogram: alpha = 1.5 only, whose
    fixed-support quadratic also gives the start an upper bound (_start_from_sums)."""
    return _tau.alpha_mode(alpha) == 1


def _fuses_output(alpha: float, head_dim: int, n_iter: int) -> bool:
    """Whether the second refinement pass can also gather the output (_final_pass): its expansion
    is exact on a fixed support only where p is a polynomial in u (alpha = 1.5: u^2; sparsemax: u),
    and a second pass must be allowed."""
    return _tau.alpha_mode(alpha) != 0 and head_dim <= _FUSED_OUTPUT_MAX_HEAD_DIM and n_iter >= 2


def _check_block_sizes(block_sizes) -> tuple[int, int]:
    if (not isinstance(block_sizes, (tuple, list)) or len(block_sizes) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in block_sizes)):
        raise ValueError(f"block_sizes must be a pair of ints (block_m, block_n), got {block_sizes!r}")
    for name, size in zip(("block_m", "block_n"), block_sizes):
        if size < 16 or size > 128 or size & (size - 1):
            raise ValueError(f"block_sizes: {name} must be a power of two in [16, 128], got {size}")
    return int(block_sizes[0]), int(block_sizes[1])


# CUDA's limit on a launch grid's second and third dimensions.
_MAX_GRID_YZ = 65535


def _check_grid(batch_heads: int, seq_len: int, block_m: int) -> None:
    """The launches put query tiles (forward, dQ) or batch * heads (dK/dV, the key-tile lists) in a
    grid dimension that CUDA limits to 65535: refuse larger inputs with the fix."""
    for count, what, fix in ((triton.cdiv(seq_len, block_m), "query tiles", "a shorter seq_len"),
                             (batch_heads, "batch * heads", "fewer sequences per call")):
        if count > _MAX_GRID_YZ:
            raise ValueError(f"entmax_attention: {count} {what} exceed CUDA's grid limit of {_MAX_GRID_YZ} "
                             f"(seq_len {seq_len}, batch * heads {batch_heads}); use {fix}")


def _check_alpha(alpha, caller: str) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"{caller}: alpha must be a float in (1, 2], got {alpha!r}")
    if not 1.0 < float(alpha) <= 2.0:
        raise ValueError(f"{caller}: alpha must be in (1, 2] (1.5 and 2 are the fast paths), got {alpha}; "
                         f"alpha = 1 is softmax: use a softmax attention backend instead")
    return float(alpha)


def default_n_iter(alpha: float) -> int:
    """Most refinement passes, enough to keep |sum(p) - 1| at fp32 rounding even for near-uniform rows
    (hundreds or thousands of almost tied scores, as an untrained model produces at long context),
    where every score lands in the top histogram bin and the bracket is much wider than the gap to
    tau: Halley's steps for alpha = 1.5 need 4 there with 8 bins (scripts/tau_convergence.py),
    Newton's for sparsemax up to 5 (512 near-tied keys), so the other alphas take 6 (their speed
    was not the benchmarked path). Typical rows stop after two: passes after convergence are skipped."""
    return 4 if alpha == 1.5 else 6


def _check_n_iter(n_iter, alpha: float, caller: str) -> int:
    if n_iter is None:
        return default_n_iter(alpha)
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or not 0 <= n_iter <= MAX_N_ITER:
        raise ValueError(f"{caller}: n_iter must be None (alpha's default: {default_n_iter(alpha)}) or an int in "
                         f"[0, {MAX_N_ITER}], got {n_iter!r}")
    return n_iter


def _check_qkv(q, k, v) -> None:
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"entmax_attention: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(f"entmax_attention: {name} must be 4-D (batch, heads, seq_len, head_dim), "
                             f"got shape {tuple(tensor.shape)}")
        if tensor.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"entmax_attention: {name} has dtype {tensor.dtype}; supported: "
                            f"bfloat16, float16, float32 (use kernels.reference for float64)")
    if not (q.device == k.device == v.device):
        raise ValueError(f"entmax_attention: q, k, v must be on one device, got q on {q.device}, "
                         f"k on {k.device}, v on {v.device}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"entmax_attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"entmax_attention: k and v must have the same shape, got {tuple(k.shape)} "
                         f"and {tuple(v.shape)}")
    batch, heads, seq_len, head_dim = q.shape
    if k.shape[0] != batch or k.shape[2] != seq_len or k.shape[3] != head_dim:
        raise ValueError(f"entmax_attention: k/v shape {tuple(k.shape)} does not match q shape "
                         f"{tuple(q.shape)}: batch, seq_len and head_dim must agree")
    if k.shape[1] < 1 or heads % k.shape[1]:
        raise ValueError(f"entmax_attention: q heads ({heads}) must be a multiple of k/v heads "
                         f"({k.shape[1]}) for grouped-query attention")
    if seq_len < 1:
        raise ValueError(f"entmax_attention: seq_len (dim 2 of q) must be >= 1, got {seq_len}")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"entmax_attention: head_dim (last dim of q) must be one of "
                         f"{SUPPORTED_HEAD_DIMS}, got {head_dim}")


def _document_arguments(doc_ids, batch: int, seq_len: int, device: torch.device):
    """The kernels' DocIds, DocStart and DocEnd: the checked ids with each position's document's
    first and one-past-last positions, or without documents an id placeholder and no bounds."""
    if doc_ids is None:
        # Never read (HAS_DOCS is off), but a kernel pointer argument must point at memory; empty,
        # so that no fill launch is issued for it.
        return torch.empty(1, device=device, dtype=torch.int32), None, None
    doc_ids = _check_doc_ids(doc_ids, batch, seq_len, device)
    doc_start = torch.searchsorted(doc_ids, doc_ids, right=False).to(torch.int32)
    doc_end = torch.searchsorted(doc_ids, doc_ids, right=True).to(torch.int32)
    return doc_ids, doc_start, doc_end


def _check_doc_ids(doc_ids, batch: int, seq_len: int, device: torch.device) -> torch.Tensor:
    if not isinstance(doc_ids, torch.Tensor):
        raise TypeError(f"entmax_attention: doc_ids must be a torch.Tensor of shape ({batch}, {seq_len}), "
                        f"got {type(doc_ids).__name__}")
    if doc_ids.dtype.is_floating_point or doc_ids.dtype.is_complex or doc_ids.dtype == torch.bool:
        raise TypeError(f"entmax_attention: doc_ids must hold integers, got dtype {doc_ids.dtype}")
    if tuple(doc_ids.shape) != (batch, seq_len):
        raise ValueError(f"entmax_attention: doc_ids must have shape (batch, seq_len) = ({batch}, {seq_len}), "
                         f"got {tuple(doc_ids.shape)}")
    if doc_ids.device != device:
        raise ValueError(f"entmax_attention: doc_ids is on {doc_ids.device} but q is on {device}")
    # A host sync, skipped while tracing or capturing a graph where it is not allowed.
    if seq_len > 1 and not _is_capturing(device):
        if bool((doc_ids[:, 1:] < doc_ids[:, :-1]).any()):
            raise ValueError("entmax_attention: doc_ids must be non-decreasing along the sequence "
                             "(packed documents are contiguous runs of one id)")
    return document_runs(doc_ids)


def document_runs(doc_ids: torch.Tensor) -> torch.Tensor:
    """Contiguous int32 run numbers (0, 0, 1, 1, 1, 2, ...) for non-decreasing ids of any integer
    size: the kernels compare ids only for equality, and a plain int32 cast would wrap ids >= 2**31."""
    starts = torch.zeros_like(doc_ids, dtype=torch.int32)
    starts[:, 1:] = (doc_ids[:, 1:] != doc_ids[:, :-1]).to(torch.int32)
    return starts.cumsum(dim=1, dtype=torch.int32).contiguous()


def _is_capturing(device: torch.device) -> bool:
    compiling = getattr(torch, "compiler", None) is not None and torch.compiler.is_compiling()
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    return compiling or capturing


# How the query-tile launches group their heads (_query_tile_program, _launch_head_group). H200,
# D 128 long, 16 heads, GPU time per kernel, each grouping against all heads in one group
# (docs/benchmarks.md §1u):
# - output and dQ launches (they read K and V): at 32k (16 MiB of K and V a head) groups of 1 to 4
#   heads take 15-20 % off each (their DRAM reads fall from 14 and 11 GB to 1.8 and 1.7), 8 heads
#   8-14 %; at 16k groups of 6 heads 7-9 %; at 8k 8 heads change nothing, 1 head costs 10-15 %.
# - the threshold launch (it reads K alone): at 32k groups of 1 to 6 heads take 13-16 % off, 8
#   heads 12 %; but at 16k, where the K of all heads (64 MiB) is 1.3 L2s, groups of 12 or 6 heads
#   cost 5 %, and at 8k 8 heads 3 %, 4 heads 11 %.
# - at 8k, where the K and V of all heads (64 MiB) are 1.3 L2s, groups of 12 heads (12 + 4) cost the
#   output and dQ launches 15 % each against one group (§1v).
# So a launch groups only once the tensors it reads for all heads overflow two L2s.
# The L2 size of the interpreter's "device" (no GPU): an H100's or H200's.
_DEFAULT_L2_BYTES = 50 * 2**20


def _launch_head_group(q: torch.Tensor, k: torch.Tensor, tensors_read: int = 2) -> int:
    """How many (batch * head) rows a query-tile launch runs side by side. The launch reads
    tensors_read [N, D] tensors per kv head (K, or K and V). While those of all heads fit in two L2
    caches, all heads in one group; otherwise the query heads of as many kv heads as
    one L2 holds the tensors of, at least one kv head's."""
    batch, heads = q.shape[:2]
    kv_heads, seq_len, head_dim = k.shape[1:]
    l2_bytes = (torch.cuda.get_device_properties(k.device).L2_cache_size if k.device.type == "cuda"
                else _DEFAULT_L2_BYTES)
    bytes_per_kv_head = tensors_read * seq_len * head_dim * k.element_size()
    if batch * kv_heads * bytes_per_kv_head <= 2 * l2_bytes:
        return batch * heads
    return max(1, l2_bytes // bytes_per_kv_head) * (heads // kv_heads)


def _forward(q, k, v, doc_ids, doc_start, doc_end, config: _LaunchConfig):
    batch, heads, seq_len, head_dim = q.shape
    n_q_tiles = triton.cdiv(seq_len, config.block_m)
    n_k_tiles = triton.cdiv(seq_len, config.block_n)
    table = (batch * heads, n_q_tiles, n_k_tiles)
    device = q.device

    out = torch.empty_like(q)
    obar = torch.empty_like(q)
    tau = torch.empty((batch * heads, seq_len), device=device, dtype=torch.float32)
    # Per key tile, how far its scores reach above the rows' references (_tile_gap).
    tile_reach = torch.empty(table, device=device, dtype=torch.float32)
    tile_list = torch.empty(table, device=device, dtype=torch.int32)
    tile_mask = torch.empty(table, device=device, dtype=torch.int8)  # every row written by _mark_tiles
    nonzero_count = torch.empty(table[:2], device=device, dtype=torch.int32)
    allowed_count = torch.empty(table[:2], device=device, dtype=torch.int32)

    has_docs = doc_start is not None
    if not has_docs:
        doc_start = doc_end = doc_ids
    if config.fused_output:
        state = torch.empty((5, batch * heads, seq_len), device=device, dtype=torch.float32)
        converged = torch.empty(table[:2], device=device, dtype=torch.int32)
        tile_gap = torch.empty(table, device=device, dtype=torch.int32)
    else:  # state and converged are never read, but pointer arguments must point at memory
        state, converged = tau, nonzero_count
        # The output pass's per-slot scratch (_output_pass). The tile reach is no longer needed once
        # the threshold launch is done, and the launches run in order on one stream.
        tile_gap = tile_reach.view(torch.int32)
    grid = (batch * heads, n_q_tiles)
    tma = _reads_by_tma(config, "forward", k, v)  # the forward reads K and V by descriptors, Q by pointers
    k_source, v_source = _head_rows_source(k, config.block_n, tma), _head_rows_source(v, config.block_n, tma)
    common = dict(H=heads, GROUP=heads // k.shape[1], HEAD_DIM=head_dim, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
                  CAUSAL=config.causal, HAS_DOCS=has_docs, ALPHA_MODE=_tau.alpha_mode(config.alpha),
                  CHUNK=_COMPACTION_CHUNK, FUSED_OUTPUT=config.fused_output, DOT_PRECISION=_dot_precision(q.dtype),
                  TMA=tma, num_warps=config.num_warps, num_stages=config.num_stages)
    stop_residual = _tau.stop_residual(config.alpha, q.dtype != torch.float32)
    n_rows_total = batch * heads * seq_len
    tau_options = {} if is_interpreting() else _tau_launch_options(config, head_dim, q.dtype)
    _entmax_attention_tau_kernel[grid](
        q, k_source, doc_ids, doc_start, doc_end, tile_reach, tile_list, nonzero_count, allowed_count, tau, state,
        converged, config.z_scale, config.power, stop_residual, SEED_STRAIGHT_RESIDUAL, seq_len, n_q_tiles, n_k_tiles,
        n_rows_total, _launch_head_group(q, k, tensors_read=1),
        NUM_BINS=NUM_BINS, N_ITER=1 if config.fused_output else config.n_iter,
        SEED_START=_starts_from_seeds(config.alpha), **{**common, **_launch_options("tau", head_dim), **tau_options})
    _entmax_attention_output_kernel[grid](
        q, k_source, v_source, out, obar, doc_ids, tile_reach, tile_list, tile_mask, nonzero_count, tau, state,
        converged, tile_gap, config.z_scale, config.power, stop_residual, seq_len, n_q_tiles, n_k_tiles, n_rows_total,
        _launch_head_group(q, k), N_ITER=config.n_iter, **{**common, **_launch_options("output", head_dim)})
    return out, obar, tau, tile_list, tile_mask, nonzero_count, allowed_count


# The head dims at which each kernel reads its per-tile operands by TMA ("forward": both forward
# launches, K and V; "bwd_dq": K and V; "bwd_dkdv": Q and dO). H200, per kernel (docs/benchmarks.md
# section 1m): at 128 all four are faster (threshold launch -1 to -5 %, output -7 to -11 %, dQ -7 to
# -10 %, dK/dV -1 to -2 %; offline the threshold launch's spill fell from 40 to 8 bytes and the
# dK/dV kernel's from 88 to 24); at 64 the threshold launch -3 to -5 %, output -5 to -9 %, dQ -8 to
# -10 %, but the dK/dV kernel +3 to +5 %, so it keeps its pointers there.
_TMA_LOAD_HEAD_DIMS = {"forward": (64, 128), "bwd_dq": (64, 128), "bwd_dkdv": (128,)}


def _uses_tma_loads(head_dim: int, device: torch.device, kernel: str) -> bool:
    """Whether `kernel` (a key of _TMA_LOAD_HEAD_DIMS) reads its per-tile operands by TMA
    (_load_head_tile): compiled for Hopper or newer, at the head dims _TMA_LOAD_HEAD_DIMS gives it."""
    return (device.type == "cuda" and not is_interpreting() and head_dim in _TMA_LOAD_HEAD_DIMS[kernel]
            and torch.cuda.get_device_capability(device)[0] >= 9)


def _reads_by_tma(config: _LaunchConfig, kernel: str, *tensors: torch.Tensor) -> bool:
    """Whether `kernel` reads `tensors` through descriptors (its TMA constexpr): where the config
    asks for it and every tensor starts 16-byte aligned, as a descriptor's base must (a view that
    starts mid-row is read by pointers)."""
    return kernel in config.tma_loads and all(t.data_ptr() % 16 == 0 for t in tensors)


def _head_rows_source(t: torch.Tensor, block_rows: int, tma: bool):
    """What _load_head_tile reads a [batch, heads, N, D] tensor through: a tensor descriptor of its
    [batch * heads, N, D] view with [1, block_rows, D] boxes (rows past N come back as zero), or the
    tensor itself."""
    if not tma:
        return t
    batch, heads, seq_len, head_dim = t.shape
    return TensorDescriptor(t, shape=[batch * heads, seq_len, head_dim], strides=[seq_len * head_dim, head_dim, 1],
                            block_shape=[1, block_rows, head_dim])


def _backward(grad_out, q, k, v, obar, doc_ids, has_docs, tau, tile_list, tile_mask, nonzero_count,
              config: _LaunchConfig):
    batch, heads, seq_len, head_dim = q.shape
    kv_heads = k.shape[1]
    n_q_tiles, n_k_tiles = tile_mask.shape[1], tile_mask.shape[2]
    device = q.device
    common = dict(H=heads, GROUP=heads // kv_heads, HEAD_DIM=head_dim, BLOCK_M=config.block_m,
                  BLOCK_N=config.block_n, CAUSAL=config.causal, HAS_DOCS=has_docs,
                  ALPHA_MODE=_tau.alpha_mode(config.alpha), DOT_PRECISION=_dot_precision(q.dtype),
                  num_warps=config.num_warps, num_stages=config.num_stages)

    dq = torch.empty_like(q)
    tau_delta = torch.empty((batch * heads, seq_len, 2), device=device, dtype=torch.float32)
    tma = _reads_by_tma(config, "bwd_dq", k, v)
    _entmax_attention_bwd_dq_kernel[(batch * heads, n_q_tiles)](
        q, _head_rows_source(k, config.block_n, tma), _head_rows_source(v, config.block_n, tma), grad_out, obar, dq,
        tau_delta, tau, doc_ids, tile_list, nonzero_count,
        config.scale, config.z_scale, config.power, seq_len, n_q_tiles, n_k_tiles, _launch_head_group(q, k),
        TMA=tma, **{**common, **_launch_options("bwd_dq", head_dim)})

    key_tile_list = torch.empty((batch * heads, n_k_tiles, n_q_tiles), device=device, dtype=torch.int32)
    key_tile_count = torch.empty((batch * heads, n_k_tiles), device=device, dtype=torch.int32)
    _key_tile_lists_kernel[(n_k_tiles, batch * heads)](
        tile_mask, key_tile_list, key_tile_count, n_q_tiles, n_k_tiles, CHUNK=_COMPACTION_CHUNK)

    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    tma = _reads_by_tma(config, "bwd_dkdv", q, grad_out)
    _entmax_attention_bwd_dkdv_kernel[(n_k_tiles, batch * kv_heads)](
        _head_rows_source(q, config.block_m, tma), k, v, _head_rows_source(grad_out, config.block_m, tma), dk, dv,
        tau_delta, doc_ids, key_tile_list, key_tile_count,
        config.scale, config.z_scale, config.power, seq_len, n_q_tiles, n_k_tiles,
        TMA=tma, **{**common, **_launch_options("bwd_dkdv", head_dim)})
    return dq, dk, dv


def _dot_precision(dtype: torch.dtype) -> str:
    """The DOT_PRECISION constexpr of `_dot` for inputs of this dtype."""
    if dtype == torch.float32:
        return "ieee"  # fp32 inputs get exact fp32 products, not tf32
    if dtype == torch.bfloat16 and is_interpreting():
        return "upcast"
    return "tf32"


class _EntmaxAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, doc_ids, doc_start, doc_end, config):
        out, obar, tau, tile_list, tile_mask, nonzero_count, allowed_count = _forward(
            q, k, v, doc_ids, doc_start, doc_end, config)
        ctx.save_for_backward(q, k, v, obar, doc_ids, tau, tile_list, tile_mask, nonzero_count)
        ctx.config = config
        ctx.has_docs = doc_start is not None
        ctx.mark_non_differentiable(nonzero_count, allowed_count)
        # No zero gradients built for the two counts (each a fill launch in every backward).
        ctx.set_materialize_grads(False)
        return out, nonzero_count, allowed_count

    @staticmethod
    def backward(ctx, grad_out, _grad_nonzero, _grad_allowed):
        if grad_out is None:  # out's gradient is undefined (e.g. a Function downstream returned None)
            return None, None, None, None, None, None, None
        q, k, v, obar, doc_ids, tau, tile_list, tile_mask, nonzero_count = ctx.saved_tensors
        dq, dk, dv = _backward(grad_out.contiguous(), q, k, v, obar, doc_ids, ctx.has_docs, tau, tile_list,
                               tile_mask, nonzero_count, ctx.config)
        return dq, dk, dv, None, None, None, None


def entmax_attention(q, k, v, *, alpha=1.5, causal=True, scale=None, doc_ids=None, n_iter=None,
                     return_stats=False, block_sizes=None):
    """alpha-entmax attention with zero-tile skipping (Triton).

    Args:
        q: (batch, heads, seq_len, head_dim); k, v: (batch, kv_heads, seq_len, head_dim) with
            heads % kv_heads == 0. bf16, fp16 or fp32, on one CUDA device (or CPU under
            TRITON_INTERPRET=1). head_dim in {16, 32, 64, 128, 256}; any seq_len >= 1.
        alpha: entmax alpha in (1, 2]; 1.5 and 2 (sparsemax) are the fast paths.
        causal: mask keys after each query.
        scale: score scale, default 1 / sqrt(head_dim).
        doc_ids: optional (batch, seq_len) integer ids, non-decreasing along the sequence: a query
            attends only to keys of its own document.
        n_iter: most refinement passes after the histogram bracket (a query tile stops after the
            pass that finds all its rows close enough to mass 1, see _tau.stop_residual); None: 4
            for alpha = 1.5, else 6 (fp32 rounding even for near-uniform rows, see default_n_iter).
        return_stats: also return a dict with "block_sparsity" (fraction of allowed tiles, those
            with at least one unmasked entry, whose probabilities are all zero: the backward skips
            them all, the forward those its lower bound on tau could rule out), the tile counts
            behind it and the tile shape.
        block_sizes: optional (block_m, block_n) tile shape, for tuning and tests.

    Returns:
        The output, shaped and typed like q; with return_stats, (output, stats).
    """
    _check_qkv(q, k, v)
    alpha = _check_alpha(alpha, "entmax_attention")
    n_iter = _check_n_iter(n_iter, alpha, "entmax_attention")
    if not isinstance(causal, bool):
        raise TypeError(f"entmax_attention: causal must be a bool, got {causal!r}")
    head_dim = q.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"entmax_attention: scale must be a positive finite float, got {scale!r}")
    require_runnable_device(q.device, "entmax_attention")

    block_m, block_n, num_warps, num_stages = _default_tiles(head_dim, q.device)
    if block_sizes is not None:
        block_m, block_n = _check_block_sizes(block_sizes)
    # The fused final pass leaves the backward a superset of the non-zero tiles: the stats, which
    # count them, take the plain passes.
    config = _LaunchConfig(alpha=alpha, causal=causal, scale=float(scale), n_iter=n_iter, block_m=block_m,
                           block_n=block_n, num_warps=num_warps, num_stages=num_stages,
                           fused_output=_fuses_output(alpha, head_dim, n_iter) and not return_stats,
                           tma_loads=frozenset(kernel for kernel in _TMA_LOAD_HEAD_DIMS
                                               if _uses_tma_loads(head_dim, q.device, kernel)))

    batch, heads, seq_len, _ = q.shape
    _check_grid(batch * heads, seq_len, block_m)
    doc_ids, doc_start, doc_end = _document_arguments(doc_ids, batch, seq_len, q.device)

    out, nonzero_count, allowed_count = _EntmaxAttentionFunction.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), doc_ids, doc_start, doc_end, config)
    if not return_stats:
        return out
    nonzero_tiles = int(nonzero_count.sum().item())
    allowed_tiles = int(allowed_count.sum().item())
    stats = {
        "block_sparsity": 1.0 - nonzero_tiles / allowed_tiles if allowed_tiles else 0.0,
        "nonzero_tiles": nonzero_tiles,
        "allowed_tiles": allowed_tiles,
        "block_m": block_m,
        "block_n": block_n,
    }
    return out, stats
