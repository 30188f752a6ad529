"""A/B timing of kernel variants: each variant in its own process, rounds alternated, one table.

A variant is a folder holding its own copy of `kernels/` and `scripts/` (for example the current
tree, and `git archive <commit> kernels scripts | tar -x -C .cache/base` for a baseline; or copies
with one constant changed). Every round runs `python -m scripts.bench_attention --methods ours
<bench args> --json OUT/<variant>_r<round>.json` inside each variant's folder, so each process
imports that variant's kernels; even rounds run the variants in reverse order, so drift on the
machine (clocks, heat) does not favour one. docs/benchmarks.md §1d was measured this way:

    python -m scripts.ab_kernels --variants .cache/base . --rounds 2 --out runs/ab -- \\
        --seqlens 8192 32768 --head-dims 64 --regimes trained sparse

`--table-only` prints the table from the JSON files already in --out (also on a CPU).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `scripts` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.bench_attention import read_json  # noqa: E402


def variant_name(folder: str) -> str:
    path = Path(folder).resolve()
    return "current" if path == Path.cwd().resolve() else path.name


def schedule(variants: list[str], rounds: int) -> list[tuple[int, str]]:
    """(round, variant) in run order: odd rounds forward, even rounds reversed."""
    order = []
    for r in range(1, rounds + 1):
        order += [(r, v) for v in (variants if r % 2 else variants[::-1])]
    return order


def run(variants: list[str], rounds: int, out: Path, bench_args: list[str], timeout: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for r, folder in schedule(variants, rounds):
        json_path = (out / f"{variant_name(folder)}_r{r}.json").resolve()
        command = [sys.executable, "-m", "scripts.bench_attention", "--methods", "ours", *bench_args,
                   "--json", str(json_path)]
        print(f"== round {r}: {variant_name(folder)}", flush=True)
        try:
            subprocess.run(command, cwd=folder, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            print(f"   {variant_name(folder)} round {r}: cut at {timeout:.0f} s", flush=True)


def table(out: Path) -> str:
    """Forward / forward+backward ms of `ours` per case (rows) and variant (columns), every round."""
    times = defaultdict(list)
    sparsity = {}
    for path in sorted(out.glob("*_r*.json")):
        variant, round_ = path.stem.rsplit("_r", 1)
        rows, _ = read_json([path])
        for row in rows:
            if row.method != "ours":
                continue
            case = (row.n, row.d, row.regime)
            times[case, variant].append((int(round_), row.fwd_ms, row.fwd_bwd_ms))
            sparsity.setdefault(case, row.block_sparsity)
    variants = sorted({v for _, v in times})
    cases = sorted({c for c, _ in times})

    def cell(values) -> str:
        fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        return ", ".join(f"{fmt(f)}/{fmt(fb)}" for _, f, fb in sorted(values)) or "-"

    lines = ["| N | D | regime | block sparsity | " + " | ".join(f"{v} fwd/f+b ms" for v in variants) + " |",
             "|---" * (4 + len(variants)) + "|"]
    for case in cases:
        s = sparsity[case]
        lines.append(f"| {case[0]} | {case[1]} | {case[2]} | {'-' if s is None else f'{s:.1%}'} | "
                     + " | ".join(cell(times.get((case, v), [])) for v in variants) + " |")
    return "\n".join(lines)


def main(argv=None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    bench_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=[], help="folders holding kernels/ and scripts/")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON files")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per process")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(own)
    if not args.table_only:
        if not args.variants:
            parser.error("--variants: name at least one folder (or pass --table-only)")
        for folder in args.variants:
            if not (Path(folder) / "kernels").is_dir() or not (Path(folder) / "scripts").is_dir():
                parser.error(f"--variants: {folder} must hold kernels/ and scripts/")
        names = [variant_name(f) for f in args.variants]
        if len(set(names)) != len(names):
            parser.error(f"--variants: folder names must differ, got {names}")
        if args.rounds < 1:
            parser.error(f"--rounds must be at least 1, got {args.rounds}")
        run(args.variants, args.rounds, args.out, bench_args, args.timeout)
    result = table(args.out)
    print(result)
    return result


if __name__ == "__main__":
    main()
