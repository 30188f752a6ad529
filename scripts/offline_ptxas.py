"""Compile the entmax forward's two launches (and, with --backward, the two backward kernels) for
sm_90 on a machine without a GPU and read ptxas's report: registers, spills, and the C7515 warning
(serialized wgmma), per launch, head dim and pass count.

Triton builds the PTX for a Hopper target offline; CUDA's ptxas ($PTXAS, on PATH, under
/usr/local/cuda*/bin, or the copy Triton's wheel bundles) assembles it; when that ptxas is older
than the PTX's `.version`, the PTX is relabelled with the version it accepts. docs/kernels.md
("What remains") used this to trace C7515 to the output pass's stores and to size the launches.

    python scripts/offline_ptxas.py --head-dims 64 128 --n-iter 0 4
    python scripts/offline_ptxas.py --head-dims 64 --n-iter 4 --loops   # SASS instructions per loop
    python scripts/offline_ptxas.py --head-dims 64 128 --backward --loops

The registers depend on the Triton version. The GPU machine runs Triton 3.6; the same version
installed aside (`pip install --target /tmp/t36 --no-deps triton==3.6.0`, then PYTHONPATH=/tmp/t36)
reproduces its counts within a few registers, where the CPU machine's Triton 3.9 gives fewer
(docs/kernels.md, What remains, "Offline analysis").

`--loops` disassembles the cubin (nvdisasm, found next to ptxas or in Triton's wheel) and counts
the machine instructions in every loop body, with the most frequent opcodes: the per-tile cost of
each pass, as the GPU would issue it (docs/kernels.md used it to size the binning).
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
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import kernels  # noqa: E402,F401  (loads kernels.entmax_attention)

entmax_attention = sys.modules["kernels.entmax_attention"]  # the attribute `kernels.entmax_attention` is the function

_POINTER_TYPES = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "Out": "*bf16", "Obar": "*bf16", "TileReach": "*fp32",
                  "Tau": "*fp32", "State": "*fp32", "TileGap": "*i32", "TileMask": "*i8", "DO": "*bf16",
                  "DQ": "*bf16", "DK": "*bf16", "DV": "*bf16", "TauDelta": "*fp32"}
_INT_POINTERS = ("DocIds", "DocStart", "DocEnd", "TileList", "ListCount", "NonzeroCount", "AllowedCount", "Converged",
                 "KeyTileList", "KeyTileCount")
_FLOAT_ARGS = ("scale", "z_scale", "power", "stop_residual", "straight_residual")
_INT_ARGS = ("N", "n_q_tiles", "n_k_tiles", "n_rows_total", "head_group")


def find_ptxas() -> str | None:
    """$PTXAS, ptxas on PATH, a CUDA toolkit's, or the one bundled with Triton's wheel."""
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    candidates = [os.environ.get("PTXAS"), shutil.which("ptxas"), *sorted(glob.glob("/usr/local/cuda*/bin/ptxas")),
                  str(bundled)]
    return next((c for c in candidates if c and Path(c).is_file()), None)


FORWARD_KERNELS = ("tau", "output")
BACKWARD_KERNELS = ("bwd_dq", "bwd_dkdv")


def forward_ptx(head_dim: int, n_iter: int, causal: bool = True, kernel: str = "tau", fused_output: bool = False) -> str:
    """PTX of `forward_kernel`."""
    return forward_kernel(head_dim, n_iter, causal, kernel, fused_output).asm["ptx"]


def forward_kernel(head_dim: int, n_iter: int, causal: bool = True, kernel: str = "tau", fused_output: bool = False):
    """One of the forward's two launches compiled (bf16, alpha = 1.5) for sm_90: "tau" (the threshold
    passes; n_iter matters there) or "output", with the tiles, warps and stages the library picks
    for a CUDA device. With fused_output the threshold launch is built as _forward builds it then,
    with one refinement pass whatever n_iter (`tau_passes`)."""
    if kernel not in FORWARD_KERNELS:
        raise ValueError(f"kernel must be one of {FORWARD_KERNELS}, got {kernel!r}")
    block_m, block_n, num_warps, num_stages = entmax_attention._default_tiles(head_dim, torch.device("cuda"))
    tma = head_dim in entmax_attention._TMA_LOAD_HEAD_DIMS["forward"]
    constants = dict(H=16, GROUP=1, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal,
                     HAS_DOCS=False, ALPHA_MODE=1, NUM_BINS=entmax_attention.NUM_BINS,
                     N_ITER=tau_passes(n_iter, fused_output) if kernel == "tau" else n_iter,
                     FUSED_OUTPUT=fused_output, SEED_START=entmax_attention._starts_from_seeds(1.5),
                     CHUNK=entmax_attention._COMPACTION_CHUNK,
                     DOT_PRECISION=entmax_attention._dot_precision(torch.bfloat16), TMA=tma)
    options = {}
    if kernel == "tau":  # the register cap and stages _forward gives this launch, where it gives them
        config = entmax_attention._LaunchConfig(alpha=1.5, causal=causal, scale=head_dim ** -0.5, n_iter=n_iter,
                                                block_m=block_m, block_n=block_n, num_warps=num_warps,
                                                num_stages=num_stages, fused_output=fused_output)
        options = entmax_attention._tau_launch_options(config, head_dim, torch.bfloat16)
    # With TMA, K and V are tensor descriptors of [heads, N, head_dim] with one key tile per box.
    descriptors = {"K": block_n, "V": block_n} if tma else {}
    return _compile(kernel, constants, num_warps, options.get("num_stages", num_stages), options.get("maxnreg"),
                    descriptors=descriptors)


def backward_ptx(head_dim: int, kernel: str = "bwd_dkdv", causal: bool = True) -> str:
    """PTX of `backward_kernel`."""
    return backward_kernel(head_dim, kernel, causal).asm["ptx"]


def backward_kernel(head_dim: int, kernel: str = "bwd_dkdv", causal: bool = True):
    """One of the backward's two kernels compiled, "bwd_dq" or "bwd_dkdv" (bf16, alpha = 1.5, one
    query head per kv head), with the tiles, warps and stages the library picks for a CUDA device."""
    if kernel not in BACKWARD_KERNELS:
        raise ValueError(f"kernel must be one of {BACKWARD_KERNELS}, got {kernel!r}")
    block_m, block_n, num_warps, num_stages = entmax_attention._default_tiles(head_dim, torch.device("cuda"))
    tma = head_dim in entmax_attention._TMA_LOAD_HEAD_DIMS[kernel]
    constants = dict(H=16, GROUP=1, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal,
                     HAS_DOCS=False, ALPHA_MODE=1, DOT_PRECISION=entmax_attention._dot_precision(torch.bfloat16),
                     TMA=tma)
    # With TMA these arguments are tensor descriptors of [heads, N, head_dim] with one tile per box.
    descriptors = {"bwd_dq": {"K": block_n, "V": block_n}, "bwd_dkdv": {"Q": block_m, "DO": block_m}}[kernel]
    return _compile(kernel, constants, num_warps, num_stages, descriptors=descriptors if tma else {})


def _compile(kernel: str, constants: dict, num_warps: int, num_stages: int, max_registers: int | None = None,
             descriptors: dict | None = None):
    """Build `_entmax_attention_<kernel>_kernel` for sm_90 with these constexprs, the common warps
    and stages overridden where the library's launch does (`_launch_options`), and ptxas's register
    cap, if any: Triton's compiled kernel, whose .asm["ptx"] is the PTX and .metadata.shared the
    shared memory one program takes. `descriptors` names the arguments that are tensor
    descriptors (of their pointer's element type), with their boxes' row counts."""
    if entmax_attention.is_interpreting():
        raise RuntimeError("offline_ptxas compiles the kernels: unset TRITON_INTERPRET (the interpreter was on "
                           "when kernels was imported)")
    fn = getattr(entmax_attention, f"_entmax_attention_{kernel}_kernel")
    signature = {}
    descriptors = descriptors or {}
    for name in fn.arg_names:
        if name in descriptors:
            signature[name] = f"tensordesc<{_POINTER_TYPES[name][1:]}[1,{descriptors[name]},{constants['HEAD_DIM']}]>"
        elif name in _POINTER_TYPES:
            signature[name] = _POINTER_TYPES[name]
        elif name in _INT_POINTERS:
            signature[name] = "*i32"
        elif name in _FLOAT_ARGS:
            signature[name] = "fp32"
        elif name in _INT_ARGS:
            signature[name] = "i32"
        else:
            signature[name] = "constexpr"
    constants = {name: value for name, value in constants.items() if name in fn.arg_names}
    # 16-byte aligned pointers, as torch allocates them: without this hint Triton does not pipeline.
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names) if signature[name][0] == "*"}
    options = {"num_warps": num_warps, "num_stages": num_stages,
               **entmax_attention._launch_options(kernel, constants["HEAD_DIM"])}
    if max_registers is not None:
        options["maxnreg"] = max_registers
    return triton.compile(ASTSource(fn, signature, constants, attrs=attrs), target=GPUTarget("cuda", 90, 32),
                          options=options)


def tau_passes(n_iter: int, fused_output: bool) -> int:
    """The threshold launch's N_ITER: with the fused final pass it stops after one pass (_forward)."""
    return 1 if fused_output else n_iter


def find_nvdisasm(ptxas: str) -> str | None:
    """nvdisasm next to ptxas, on PATH, or the one bundled with Triton's wheel."""
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    candidates = [str(Path(ptxas).parent / "nvdisasm"), shutil.which("nvdisasm"), str(bundled)]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def _assemble(ptx: str, ptxas: str, cubin: Path, lineinfo: bool = False) -> subprocess.CompletedProcess:
    path = cubin.with_suffix(".ptx")
    path.write_text(ptx)
    return subprocess.run([ptxas, "-v", *(["-lineinfo"] if lineinfo else []), "--gpu-name", "sm_90a", str(path),
                           "-o", str(cubin)], capture_output=True, text=True)


def ptxas_report(ptx: str, ptxas: str, loops: bool = False) -> dict:
    """Registers, spill-store bytes and whether C7515 was reported, from `ptxas -v`; with loops,
    also "loops" (see `sass_loops`; assembled with line information, which leaves the code as it
    is). A ptxas older than the PTX's `.version` gets the PTX relabelled with the newest version it
    names (the instructions used here predate it)."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        done = _assemble(ptx, ptxas, cubin, lineinfo=loops)
        older = re.search(r"Unsupported \.version \S+; current version is '([\d.]+)'", done.stdout + done.stderr)
        if done.returncode != 0 and older:
            done = _assemble(re.sub(r"\.version \d+\.\d+", f".version {older.group(1)}", ptx, count=1), ptxas, cubin,
                             lineinfo=loops)
        log = done.stdout + done.stderr
        if done.returncode != 0:
            raise RuntimeError(f"ptxas failed:\n{log}")
        registers = re.search(r"Used (\d+) registers", log)
        spills = re.search(r"(\d+) bytes spill stores", log)
        report = {"registers": int(registers.group(1)) if registers else None,
                  "spill_stores": int(spills.group(1)) if spills else None,
                  "c7515": "C7515" in log}
        if loops:
            nvdisasm = find_nvdisasm(ptxas)
            if nvdisasm is None:
                raise RuntimeError("--loops needs nvdisasm (CUDA's bin/ or Triton's wheel)")
            sass = subprocess.run([nvdisasm, "-c", "-g", str(cubin)], capture_output=True, text=True,
                                  check=True).stdout
            report["loops"] = sass_loops(sass)
    return report


def sass_loops(sass: str) -> list[dict]:
    """Every loop of a disassembled kernel (`nvdisasm -c` text), as a backward branch to a label:
    its first and last instruction index, its instruction count, and its opcode counts (predicates
    and modifiers dropped: `@!P0 FADD.FTZ` counts as FADD). Nested loops are listed separately,
    the outer one including the inner ones' instructions. A loop's count covers both sides of the
    branches inside it (a tile's mask, for instance, runs only on diagonal tiles). Branches after
    the last EXIT are not loops: ptxas puts the slow paths of divergent shuffles there, and they
    jump back into the code above. With line information (`nvdisasm -g` of a cubin assembled with
    `-lineinfo`) a loop also gets "sources": (file, line, instructions) for each source line, most
    instructions first."""
    labels, instructions, sources = {}, [], []
    source = None
    for line in sass.splitlines():
        location = re.search(r'//## File "([^"]+)", line (\d+)', line)
        if location:  # `nvdisasm -g`: the source line of the instructions that follow
            source = (location.group(1), int(location.group(2)))
            continue
        label = re.match(r"\s*\.(L_x_\d+):", line)
        if label:
            labels[label.group(1)] = len(instructions)
            continue
        instruction = re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*?)\s*;", line)
        if instruction:
            instructions.append(instruction.group(1))
            sources.append(source)
    exits = [i for i, text in enumerate(instructions) if text == "EXIT"]
    end = exits[-1] if exits else len(instructions)
    loops = []
    for last, text in enumerate(instructions[:end]):
        target = re.search(r"\bBRA\b.*?\.(L_x_\d+)", text)
        if target and labels.get(target.group(1), last + 1) <= last:
            first = labels[target.group(1)]
            opcodes = {}
            for body_text in instructions[first:last + 1]:
                opcode = re.sub(r"^@!?U?P\w+\s+", "", body_text).split()[0].split(".")[0]
                opcodes[opcode] = opcodes.get(opcode, 0) + 1
            loop = {"first": first, "last": last, "instructions": last - first + 1,
                    "opcodes": dict(sorted(opcodes.items(), key=lambda item: -item[1]))}
            located = Counter(sources[i] for i in range(first, last + 1) if sources[i] is not None)
            if located:
                loop["sources"] = [(path, number, count) for (path, number), count in located.most_common()]
            loops.append(loop)
    return loops


def source_lines_report(rows: list[dict], k: int) -> str:
    """Per loop of each row, the k source lines with the most of its instructions, with their text."""
    texts = {}
    out = []
    for row in rows:
        for loop in row["loops"]:
            out.append(f"\n{row['kernel']} | head dim {row['head_dim']} | loop {loop['first']}-{loop['last']}, "
                       f"{loop['instructions']} instructions:")
            for path, number, count in loop.get("sources", [])[:k]:
                if path not in texts:
                    # Triton's cache may hand back PTX compiled from another checkout of the same
                    # source (the cache key is the source): read the kernels' file of that name here.
                    here = Path(entmax_attention.__file__).parent / Path(path).name
                    found = next((c for c in (Path(path), here) if c.is_file()), None)
                    texts[path] = found.read_text().splitlines() if found else []
                text = texts[path][number - 1].strip() if number <= len(texts[path]) else ""
                out.append(f"  {count:5d}  {Path(path).name}:{number}  {text[:100]}")
    return "\n".join(out)


def _report_row(compiled, kernel: str, head_dim: int, n_iter: int | None, ptxas: str, loops: bool) -> dict:
    """ptxas's report on one compiled launch, with its shared memory, printed as a table row."""
    row = {"kernel": kernel, "head_dim": head_dim, "n_iter": n_iter, "shared": compiled.metadata.shared,
           **ptxas_report(compiled.asm["ptx"], ptxas, loops=loops)}
    print(f"| {kernel} | {head_dim} | {'-' if n_iter is None else n_iter} | {row['registers']} | "
          f"{row['spill_stores']} | {row['c7515']} | {row['shared'] / 1024:.1f} |")
    return row


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--n-iter", type=int, nargs="+", default=[entmax_attention.default_n_iter(1.5)])
    parser.add_argument("--loops", action="store_true", help="also count SASS instructions per loop")
    parser.add_argument("--source-lines", type=int, default=0, metavar="K",
                        help="with --loops, also the K source lines that take the most instructions of each loop")
    parser.add_argument("--fused-output", action="store_true", help="the launches as the fused final pass builds them")
    parser.add_argument("--backward", action="store_true", help="also the backward's dQ and dK/dV kernels")
    args = parser.parse_args(argv)
    ptxas = find_ptxas()
    if ptxas is None:
        parser.error("ptxas not found: put CUDA's bin/ on PATH or set PTXAS")
    rows = []
    # Shared memory per program: a multiprocessor has 228 KiB, of which each program also takes 1 KiB.
    print("| kernel | head dim | n_iter | registers | spill stores (bytes) | C7515 (serialized wgmma) | shared KiB |")
    print("|---|---|---|---|---|---|---|")
    for kernel in FORWARD_KERNELS:
        for head_dim in args.head_dims:
            passes = sorted({tau_passes(n, args.fused_output) for n in args.n_iter})
            for n_iter in passes if kernel == "tau" else [None]:
                compiled = forward_kernel(head_dim, n_iter or (entmax_attention.default_n_iter(1.5) if kernel == "output"
                                                               else 0), kernel=kernel, fused_output=args.fused_output)
                rows.append(_report_row(compiled, kernel, head_dim, n_iter, ptxas, args.loops))
    for kernel in BACKWARD_KERNELS if args.backward else ():
        for head_dim in args.head_dims:
            rows.append(_report_row(backward_kernel(head_dim, kernel), kernel, head_dim, None, ptxas, args.loops))
    if args.loops:
        print("\n| kernel | head dim | n_iter | loop (instruction indices) | instructions | HGMMA | top opcodes |")
        print("|---|---|---|---|---|---|---|")
        for row in rows:
            for loop in row["loops"]:
                top = " ".join(f"{name}:{count}" for name, count in list(loop["opcodes"].items())[:8])
                print(f"| {row['kernel']} | {row['head_dim']} | {'-' if row['n_iter'] is None else row['n_iter']} | "
                      f"{loop['first']}-{loop['last']} | {loop['instructions']} | {loop['opcodes'].get('HGMMA', 0)} | "
                      f"{top} |")
    if args.loops and args.source_lines > 0:
        print(source_lines_report(rows, args.source_lines))
    return rows


if __name__ == "__main__":
    main()
