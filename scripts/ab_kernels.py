"""A/B timing of kernel variants: each variant in its own process, rounds alternated, one table.

A variant is a folder holding its own copy of `kernels/` and `scripts/` (for example the current
tree, and `git archive <commit> kernels scripts | tar -x -C .cache/base` for a baseline; or copies
with one constant changed). Every round runs `python -m scripts.bench_attention --methods ours
<bench args> --json OUT/<variant>_r<round>.json` inside each variant's folder, so each process
imports that variant's kernels; even rounds run the variants in reverse order, so drift on the
machine (clocks, heat) does not favour one. docs/benchmarks.md §1d was measured this way:

    python -m scripts.ab_kernels --variants .cache/base . --rounds 2 --out runs/ab -- \\
        --seqlens 8192 32768 --head-dims 64 --regimes trained sparse

`--tool kernel_times` runs `python -m scripts.kernel_times --methods ours <args>` instead and
tables each kernel's GPU time, the mean over rounds, beside the first variant's, and what each
variant's kernels compiled to (docs/benchmarks.md §1j was measured this way, by hand):

    python -m scripts.ab_kernels --tool kernel_times --compile-first --variants .cache/ab/main \\
        .cache/ab/new --rounds 2 --out runs/ab -- --seqlens 4096 8192 32768 --regimes trained long

`--compile-first` first runs every variant once, all at the same time, and discards the timings:
compiling is CPU work and the GPU machine has many cores, so the Triton caches fill in the time of
one variant instead of all of them (kernel_times: one warm-up and one profiled call per case).

`--table-only` prints the table from the JSON files already in --out (also on a CPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `scripts` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.bench_attention import read_json  # noqa: E402
from scripts.kernel_times import case_label, side_by_side  # noqa: E402

TOOLS = ("bench_attention", "kernel_times")


def variant_name(folder: str) -> str:
    path = Path(folder).resolve()
    return "current" if path == Path.cwd().resolve() else path.name


def schedule(variants: list[str], rounds: int) -> list[tuple[int, str]]:
    """(round, variant) in run order: odd rounds forward, even rounds reversed."""
    order = []
    for r in range(1, rounds + 1):
        order += [(r, v) for v in (variants if r % 2 else variants[::-1])]
    return order


def tool_command(tool: str, tool_args: list[str], json_path: Path | None) -> list[str]:
    """The command one variant's process runs, inside that variant's folder."""
    command = [sys.executable, "-m", f"scripts.{tool}", "--methods", "ours", *tool_args]
    return command + (["--json", str(json_path)] if json_path is not None else [])


def compile_first(variants: list[str], tool: str, tool_args: list[str], timeout: float) -> None:
    """Every variant's process at once, timings discarded, to fill the Triton caches in parallel."""
    quick = ["--calls", "1", "--warmup", "1"] if tool == "kernel_times" else []
    print(f"== compiling {len(variants)} variants at once", flush=True)
    processes = [subprocess.Popen(tool_command(tool, tool_args + quick, None), cwd=folder,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for folder in variants]
    for folder, process in zip(variants, processes):
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            print(f"   {variant_name(folder)}: compiling cut at {timeout:.0f} s", flush=True)


def run(variants: list[str], rounds: int, out: Path, tool_args: list[str], timeout: float,
        tool: str = "bench_attention") -> None:
    out.mkdir(parents=True, exist_ok=True)
    for r, folder in schedule(variants, rounds):
        json_path = (out / f"{variant_name(folder)}_r{r}.json").resolve()
        print(f"== round {r}: {variant_name(folder)}", flush=True)
        try:
            subprocess.run(tool_command(tool, tool_args, json_path), cwd=folder, timeout=timeout, check=False)
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


def kernel_table(out: Path, variants: list[str] | None = None) -> str:
    """From kernel_times JSON files: each variant's rounds averaged into one run (every kernel's
    GPU ms per call), tabled by kernel_times.side_by_side against the first variant; then what
    each variant's kernels compiled to. Variants in the given order, else by name."""
    rounds = defaultdict(list)  # variant -> the cases of each of its rounds
    compiled = {}
    for path in sorted(out.glob("*_r*.json")):
        variant, _ = path.stem.rsplit("_r", 1)
        saved = json.loads(path.read_text())
        rounds[variant].append(saved["cases"])
        if saved.get("compiled"):  # a run cut short saved its cases but not yet what they compiled to
            compiled.setdefault(variant, saved["compiled"])
    if not rounds:
        raise ValueError(f"no kernel_times JSON files (<variant>_r<round>.json) in {out}")
    names = [v for v in variants or sorted(rounds) if v in rounds]
    runs = [(v, [_mean_case(same) for same in _same_cases(rounds[v])]) for v in names]
    lines = ["GPU ms per call, mean over rounds", "", side_by_side(runs)]
    rows = [(v, c) for v in names for c in compiled.get(v, [])]
    if rows:
        lines += ["| variant | kernel | registers | spilled B | shared B | warps |", "|---|---|---|---|---|---|"]
        lines += [f"| {v} | {c['kernel']} | {c['registers']} | {c['spills']} | {c['shared']} | {c['warps']} |"
                  for v, c in rows]
    return "\n".join(lines)


def _same_cases(rounds: list[list[dict]]) -> list[list[dict]]:
    """The cases of a variant grouped across its rounds, in the first round's order."""
    groups = defaultdict(list)
    for cases in rounds:
        for case in cases:
            groups[case_label(case)].append(case)
    return list(groups.values())


def _mean_case(same: list[dict]) -> dict:
    """One case averaged over rounds: each kernel's ms per call (0 in a round without it)."""
    total = defaultdict(float)
    count = {}
    for case in same:
        for name, ms, launches in case["kernels"]:
            total[name] += ms
            count[name] = launches
    kernels = sorted(((name, ms / len(same), count[name]) for name, ms in total.items()), key=lambda k: -k[1])
    return {**same[0], "kernels": kernels, "total_ms": sum(ms for _, ms, _ in kernels)}


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
    parser.add_argument("--tool", choices=TOOLS, default="bench_attention",
                        help="what each process runs: whole-call times or per-kernel GPU times")
    parser.add_argument("--compile-first", action="store_true",
                        help="run every variant once at the same time first, timings discarded")
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
        if args.compile_first:
            compile_first(args.variants, args.tool, bench_args, args.timeout)
        run(args.variants, args.rounds, args.out, bench_args, args.timeout, args.tool)
    if args.tool == "kernel_times":
        result = kernel_table(args.out, [variant_name(f) for f in args.variants] or None)
    else:
        result = table(args.out)
    print(result)
    return result


if __name__ == "__main__":
    main()
