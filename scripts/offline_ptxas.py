"""Compile the entmax forward's two launches for sm_90 on a machine without a GPU and read ptxas's
report: registers, spills, and the C7515 warning (serialized wgmma), per launch, head dim and pass
count.

Triton builds the PTX for a Hopper target offline; CUDA's ptxas ($PTXAS, on PATH, under
/usr/local/cuda*/bin, or the copy Triton's wheel bundles) assembles it; when that ptxas is older
than the PTX's `.version`, the PTX is relabelled with the version it accepts. docs/kernels.md
("What remains") used this to trace C7515 to the output pass's stores and to size the launches.

    python scripts/offline_ptxas.py --head-dims 64 128 --n-iter 0 4
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import kernels  # noqa: E402,F401  (loads kernels.entmax_attention)

entmax_attention = sys.modules["kernels.entmax_attention"]  # the attribute `kernels.entmax_attention` is the function

_POINTER_TYPES = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "Out": "*bf16", "Obar": "*bf16", "TileMax": "*fp32",
                  "Tau": "*fp32", "TileMask": "*i8"}
_INT_POINTERS = ("DocIds", "DocStart", "DocEnd", "TileList", "ListCount", "NonzeroCount", "AllowedCount")
_FLOAT_ARGS = ("z_scale", "power", "stop_residual")
_INT_ARGS = ("N", "n_q_tiles", "n_k_tiles")


def find_ptxas() -> str | None:
    """$PTXAS, ptxas on PATH, a CUDA toolkit's, or the one bundled with Triton's wheel."""
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    candidates = [os.environ.get("PTXAS"), shutil.which("ptxas"), *sorted(glob.glob("/usr/local/cuda*/bin/ptxas")),
                  str(bundled)]
    return next((c for c in candidates if c and Path(c).is_file()), None)


FORWARD_KERNELS = ("tau", "output")


def forward_ptx(head_dim: int, n_iter: int, causal: bool = True, kernel: str = "tau") -> str:
    """PTX of one of the forward's two launches (bf16, alpha = 1.5) for sm_90: "tau" (the threshold
    passes; n_iter matters there) or "output", with the tiles, warps and stages the library picks
    for a CUDA device."""
    if entmax_attention.is_interpreting():
        raise RuntimeError("offline_ptxas compiles the kernels: unset TRITON_INTERPRET (the interpreter was on "
                           "when kernels was imported)")
    if kernel not in FORWARD_KERNELS:
        raise ValueError(f"kernel must be one of {FORWARD_KERNELS}, got {kernel!r}")
    fn = getattr(entmax_attention, f"_entmax_attention_{kernel}_kernel")
    signature = {}
    for name in fn.arg_names:
        if name in _POINTER_TYPES:
            signature[name] = _POINTER_TYPES[name]
        elif name in _INT_POINTERS:
            signature[name] = "*i32"
        elif name in _FLOAT_ARGS:
            signature[name] = "fp32"
        elif name in _INT_ARGS:
            signature[name] = "i32"
        else:
            signature[name] = "constexpr"
    block_m, block_n, num_warps, num_stages = entmax_attention._default_tiles(head_dim, torch.device("cuda"))
    constants = dict(H=16, GROUP=1, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal,
                     HAS_DOCS=False, ALPHA_MODE=1, NUM_BINS=entmax_attention.NUM_BINS, N_ITER=n_iter,
                     CHUNK=entmax_attention._COMPACTION_CHUNK,
                     DOT_PRECISION=entmax_attention._dot_precision(torch.bfloat16))
    constants = {name: value for name, value in constants.items() if name in fn.arg_names}
    # 16-byte aligned pointers, as torch allocates them: without this hint Triton does not pipeline.
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names) if signature[name][0] == "*"}
    compiled = triton.compile(ASTSource(fn, signature, constants, attrs=attrs), target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=num_warps, num_stages=num_stages))
    return compiled.asm["ptx"]


def _assemble(ptx: str, ptxas: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.ptx"
        path.write_text(ptx)
        return subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", str(path), "-o", str(path.with_suffix(".cubin"))],
                              capture_output=True, text=True)


def ptxas_report(ptx: str, ptxas: str) -> dict:
    """Registers, spill-store bytes and whether C7515 was reported, from `ptxas -v`. A ptxas older
    than the PTX's `.version` gets the PTX relabelled with the newest version it names (the
    instructions used here predate it)."""
    done = _assemble(ptx, ptxas)
    older = re.search(r"Unsupported \.version \S+; current version is '([\d.]+)'", done.stdout + done.stderr)
    if done.returncode != 0 and older:
        done = _assemble(re.sub(r"\.version \d+\.\d+", f".version {older.group(1)}", ptx, count=1), ptxas)
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed:\n{log}")
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    return {"registers": int(registers.group(1)) if registers else None,
            "spill_stores": int(spills.group(1)) if spills else None,
            "c7515": "C7515" in log}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--n-iter", type=int, nargs="+", default=[entmax_attention.default_n_iter(1.5)])
    args = parser.parse_args(argv)
    ptxas = find_ptxas()
    if ptxas is None:
        parser.error("ptxas not found: put CUDA's bin/ on PATH or set PTXAS")
    rows = []
    print("| kernel | head dim | n_iter | registers | spill stores (bytes) | C7515 (serialized wgmma) |")
    print("|---|---|---|---|---|---|")
    for kernel in FORWARD_KERNELS:
        for head_dim in args.head_dims:
            for n_iter in args.n_iter if kernel == "tau" else [None]:
                ptx = forward_ptx(head_dim, n_iter or 0, kernel=kernel)
                row = {"kernel": kernel, "head_dim": head_dim, "n_iter": n_iter, **ptxas_report(ptx, ptxas)}
                rows.append(row)
                print(f"| {kernel} | {head_dim} | {'-' if n_iter is None else n_iter} | {row['registers']} | "
                      f"{row['spill_stores']} | {row['c7515']} |")
    return rows


if __name__ == "__main__":
    main()
