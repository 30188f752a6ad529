"""Does the dense pass run faster per score with 128-row query tiles? A stripped-down dense pass
(the threshold launch's key-tile loads, QK^T, row maxima and per-tile maxima, nothing else) timed
with 64-row and 128-row programs on the bench's inputs (docs/kernels.md, What remains, "L2 traffic").

A 64-row program loads every causal key tile for its 64 rows; a 128-row one loads it once for two
64-row halves (and still stores one tile maximum per half, as the lists need). Same products, same
maxima: if the wide program is faster per causal tile pair, the loads (L2 bandwidth or its energy)
set the pace, and the threshold launch would gain from the same change.

    python docs/experiments/dense_pass_width.py --seqlens 8192 32768 --head-dim 128    # GPU: check, then time
    TRITON_INTERPRET=1 python docs/experiments/dense_pass_width.py --check-only --seqlens 256 --head-dim 32
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from kernels.entmax_attention import _head_rows_source, _head_source, _load_rows, _tile_scores  # noqa: E402

TILE = 64  # the rows per list, and the key tile width, of the real kernels
# (block rows, warps) per variant: the kernels' own 64 x 4, and two 128-row programs
VARIANTS = {"64 rows, 4 warps": (64, 4), "128 rows, 8 warps": (128, 8), "128 rows, 4 warps": (128, 4)}


@triton.jit
def _dense_max_kernel(Q, K, RowMax, TileMax, z_scale, N, n_k_tiles, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, TMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Row maxima of z over the causal keys, and per (64-row half, key tile) the tile's maximum z."""
    qt = tl.program_id(0)
    bh = tl.program_id(1)
    HALVES: tl.constexpr = BLOCK_M // BLOCK_N
    first_row = qt * BLOCK_M
    rows = first_row + tl.arange(0, BLOCK_M)
    head_offset = bh.to(tl.int64) * N * HEAD_DIM
    q = _load_rows(Q + head_offset, rows, N, HEAD_DIM)
    K_head = _head_source(K, head_offset, TMA)
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    kt_end = tl.minimum(tl.cdiv(first_row + BLOCK_M, BLOCK_N), n_k_tiles)
    halves = qt * HALVES + tl.arange(0, HALVES)
    for kt in range(0, kt_end):
        raw, _ = _tile_scores(q, K_head, bh, 0, rows, rows, first_row, 0, 0, kt, N, True, False, HEAD_DIM, BLOCK_N,
                              DOT_PRECISION, TMA)
        tile_row_max = tl.max(raw, axis=1)
        row_max = tl.maximum(row_max, tile_row_max)
        tile_max = tl.max(tl.reshape(tile_row_max, [HALVES, BLOCK_N]), axis=1) * z_scale
        # TileMax is [bh, 64-row tiles, key tiles], with as many 64-row tiles as key tiles
        tl.store(TileMax + ((bh * n_k_tiles + halves).to(tl.int64) * n_k_tiles + kt), tile_max)
    tl.store(RowMax + bh.to(tl.int64) * N + rows, row_max * z_scale, mask=rows < N)


def dense_max(q: torch.Tensor, k: torch.Tensor, block_m: int, num_warps: int):
    """(row maxima of z, (bh, 64-row tile, key tile) maxima of z, -inf above the diagonal) for
    q, k of shape (bh, n, d), n a multiple of block_m."""
    bh, n, d = q.shape
    if n % block_m:
        raise ValueError(f"n={n} must be a multiple of block_m={block_m}")
    z_scale = 0.5 / math.sqrt(d)
    n_k_tiles = n // TILE
    interpreting = q.device.type != "cuda"
    tma = not interpreting and torch.cuda.get_device_capability(q.device)[0] >= 9
    row_max = torch.empty(bh, n, device=q.device, dtype=torch.float32)
    tile_max = torch.full((bh, n // TILE, n_k_tiles), float("-inf"), device=q.device, dtype=torch.float32)
    source = _head_rows_source(k.unsqueeze(0), TILE, tma) if tma else k
    _dense_max_kernel[(n // block_m, bh)](q, source, row_max, tile_max, z_scale, n, n_k_tiles, HEAD_DIM=d,
                                          BLOCK_M=block_m, BLOCK_N=TILE, TMA=tma,
                                          DOT_PRECISION="upcast" if interpreting else "tf32", num_warps=num_warps)
    return row_max, tile_max


def reference(q: torch.Tensor, k: torch.Tensor):
    bh, n, d = q.shape
    z = (q.double() @ k.double().transpose(1, 2)) * (0.5 / math.sqrt(d))
    z = z.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    tiles = z.view(bh, n // TILE, TILE, n // TILE, TILE).amax(dim=(2, 4))
    return z.amax(-1), tiles


def check(q, k) -> None:
    """Every variant's maxima against float64 (bf16 inputs: products exact, fp32 sums)."""
    want_rows, want_tiles = reference(q, k)
    for name, (block_m, num_warps) in VARIANTS.items():
        rows, tiles = dense_max(q, k, block_m, num_warps)
        for got, want, what in ((rows, want_rows, "row"), (tiles, want_tiles, "tile")):
            finite = torch.isfinite(want)
            if not torch.equal(torch.isfinite(got), finite) or torch.isnan(got).any():
                raise AssertionError(f"{name}: {what} maxima masked differently from the reference")
            error = (got.double()[finite] - want[finite]).abs().max().item()
            if error > 1e-4 * max(1.0, want[finite].abs().max().item()):
                raise AssertionError(f"{name}: {what} maxima off by {error:.2e}")


def main(argv=None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seqlens", type=int, nargs="+", default=[8192, 32768])
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=16, help="batch x heads")
    p.add_argument("--regime", default="long")
    p.add_argument("--check-only", action="store_true")
    args = p.parse_args(argv)
    from scripts.bench_attention import make_qk

    device = "cuda" if torch.cuda.is_available() else "cpu"
    lines = []
    for n in args.seqlens:
        q, k = make_qk(n, args.head_dim, args.regime, heads=args.heads, dtype=torch.bfloat16, device=device)
        q, k = q[0].contiguous(), k[0].contiguous()
        # the kernel indexes heads by n: the check's slices must be contiguous
        m = min(n, 1024)
        check(q[:2, :m].contiguous(), k[:2, :m].contiguous())
        if args.check_only:
            lines.append(f"N {n} D {args.head_dim}: every variant's maxima match float64")
        else:
            pairs = args.heads * (n // TILE) * (n // TILE + 1) // 2  # causal 64 x 64 tile pairs
            for name, (block_m, num_warps) in VARIANTS.items():
                ms = triton.testing.do_bench(lambda: dense_max(q, k, block_m, num_warps), warmup=50, rep=300)
                lines.append(f"N {n} D {args.head_dim} {args.regime}, {name}: {ms:.4f} ms, "
                             f"{ms * 1e6 / pairs:.2f} ns per causal 64x64 tile pair")
        print(lines[-1] if args.check_only else "\n".join(lines[-len(VARIANTS):]), flush=True)
    return lines


if __name__ == "__main__":
    main()
