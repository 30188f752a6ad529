"""Where the entmax forward's threshold launch spends its time, per pass, from an Nsight Compute profile.

Triton inlines every helper into one kernel, so a per-function profile says nothing; but its SASS
keeps line info. ncu's source page with `--print-source cuda,sass` lists each source line and the
SASS instructions under it with their warp-stall samples. This script walks the instructions in
address order (which is program order for this kernel: seed tiles, dense pass, candidates,
histogram, bracket, refinement passes; an export of the output launch splits into its prologue and
`_output_pass`) and charges every instruction to the pass that was last entered, so the shared
helpers (`_raw_scores`, `_load_rows`, `_dot`, Triton's reductions) count for the pass that
inlines them. A new refinement pass starts at the first `_refine_pass` line after a Halley update
and the tile dropping that follows it.

    ncu --clock-control none --kernel-name regex:_entmax_attention_tau --launch-skip 3 --launch-count 1 \\
        --section SourceCounters --import-source yes -o fwd python -m scripts.bench_attention \\
        --seqlens 8192 --head-dims 64 --regimes trained --methods ours
    ncu -i fwd.ncu-rep --page source --csv --print-source cuda,sass > fwd_source.csv
    python scripts/ncu_phases.py fwd_source.csv            # runs on a CPU too

(`. scripts/gpu_runs.sh setup profile` does the first two.) Line numbers are matched against the
kernels/ files of this checkout, so profile and summarize the same commit.
"""

from __future__ import annotations

import argparse
import ast
import csv
import sys
from pathlib import Path

KERNEL_FILES = ("entmax_attention.py", "_tau.py")
# The passes of the forward, in program order, by the helper that runs each: _tile_row_max is the
# seed tiles' products (_seed_row_max) before the dense pass; _output_pass is the second launch,
# _entmax_attention_output_kernel, whose report is exported separately.
PASSES = ("_tile_row_max", "_dense_pass", "_compact_candidates", "_histogram_pass", "bracket_from_histogram",
          "_refine_pass", "_output_pass")


def function_ranges(kernels_dir: Path) -> dict[str, list[tuple[int, int, str]]]:
    """file name -> (first line, last line, function name) of every function in it."""
    ranges = {}
    for name in KERNEL_FILES:
        tree = ast.parse((kernels_dir / name).read_text())
        ranges[name] = [(node.lineno, node.end_lineno, node.name)
                        for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]
    return ranges


def function_at(ranges, path: str, line: int) -> str:
    """Innermost function holding path:line, or the file name for files outside kernels/."""
    name = path.rsplit("/", 1)[-1]
    best = None
    for first, last, function in ranges.get(name, ()):
        if first <= line <= last and (best is None or first > best[0]):
            best = (first, function)
    return best[1] if best else name


def read_instructions(csv_path: Path, ranges) -> list[tuple[int, str, int]]:
    """(address, function of its source line, stall samples) per SASS instruction, by address."""
    instructions, path, function = [], "", "?"
    with open(csv_path, newline="") as f:
        for row in csv.reader(f):
            if row and row[0] == "File Path":
                path = row[1]
                continue
            if len(row) < 5 or row[0] in ("Line No", "Function Name"):
                continue
            if row[0]:  # a source line; the SASS rows under it belong to it
                function = function_at(ranges, path, int(row[0]))
            if row[2].startswith("0x"):
                samples = int(row[4]) if row[4].strip().isdigit() else 0
                instructions.append((int(row[2], 16), function, samples))
    if not instructions:
        raise SystemExit(f"{csv_path}: no SASS rows with samples; export it with "
                         f"`ncu -i REPORT --page source --csv --print-source cuda,sass`")
    return sorted(instructions)


def phase_samples(instructions) -> dict[str, int]:
    """Samples per pass; refinement passes are numbered (_refine_pass#1, #2, ...)."""
    totals: dict[str, int] = {}
    phase, stage, refine_count = "prologue", -1, 0
    updated = dropped = False  # since the current refinement pass began
    for _, function, samples in instructions:
        if function in PASSES and PASSES.index(function) > stage:
            stage = PASSES.index(function)
            phase = function
            if function == "_refine_pass":
                refine_count, phase = 1, "_refine_pass#1"
        elif function == "_refine_pass" and dropped:
            refine_count += 1
            phase = f"_refine_pass#{refine_count}"
            updated = dropped = False
        updated = updated or function == "halley_update"
        dropped = dropped or (updated and function == "_drop_zero_tiles")
        totals[phase] = totals.get(phase, 0) + samples
    return totals


def main(argv=None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path, help="ncu --page source --csv --print-source cuda,sass output")
    parser.add_argument("--kernels-dir", type=Path, default=Path(__file__).resolve().parent.parent / "kernels")
    args = parser.parse_args(argv)
    totals = phase_samples(read_instructions(args.csv, function_ranges(args.kernels_dir)))
    grand = sum(totals.values()) or 1
    print("| pass | stall samples | share |")
    print("|---|---|---|")
    for phase, samples in totals.items():
        print(f"| {phase} | {samples} | {100 * samples / grand:.1f}% |")
    return totals


if __name__ == "__main__":
    main(sys.argv[1:])
