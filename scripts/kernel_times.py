"""GPU time per kernel of one forward+backward call, from torch.profiler.

Where `bench_attention` times whole calls, this splits a call into its kernels: ours (threshold,
output, dQ, key-tile lists, dK/dV) next to adasplash's, or one variant of our kernels against
another, each kernel's change read off directly (docs/benchmarks.md §1i used it for the register
caps). For our Triton kernels it also prints what they were compiled to: registers, spilled bytes,
shared memory and warps, as the GPU machine's Triton built them.

    python -m scripts.kernel_times --seqlens 4096 8192 --regimes trained long --methods ours adasplash
    python -m scripts.kernel_times --seqlens 8192 --json main.json          # in each variant's folder
    python -m scripts.kernel_times --from-json main.json variant.json       # side by side; a CPU suffices

Each case runs `--warmup` calls, then profiles `--calls` more; a kernel's time is its device time
summed over the profiled calls and divided by their number (so "x2" beside it means two launches
per call). The inputs are `bench_attention`'s (same regimes, seeds, B = 1, H = 16, bf16, causal).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts import bench_attention  # noqa: E402
from scripts.gpu_clocks import ClockSampler  # noqa: E402


def per_call_ms(events, calls: int) -> list[tuple[str, float, float]]:
    """(kernel name, ms per call, launches per call) for every event with device time, largest
    first. `events` are torch.profiler's key averages (`.key`, `.self_device_time_total` in µs,
    `.count`)."""
    rows = [(e.key, e.self_device_time_total / calls / 1e3, e.count / calls) for e in events
            if e.self_device_time_total > 0]
    return sorted(rows, key=lambda row: -row[1])


def compiled_kernels(module) -> list[dict]:
    """Registers, spills, shared memory and warps of every compiled Triton kernel of `module`
    (those named `_entmax_attention_*`), read from their caches."""
    found = []
    for name in sorted(dir(module)):
        kernel = getattr(module, name)
        if not name.startswith("_entmax_attention") or not hasattr(kernel, "device_caches"):
            continue
        for entry in kernel.device_caches.values():
            cache = entry[0] if isinstance(entry, tuple) else entry
            for compiled in cache.values():
                found.append({"kernel": name, "registers": compiled.n_regs, "spills": compiled.n_spills,
                              "shared": compiled.metadata.shared, "warps": compiled.metadata.num_warps})
    return found


def profile_case(method: str, n: int, d: int, regime, calls: int, warmup: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    q, k, v = bench_attention.make_qkv(n, d, regime, dtype=torch.bfloat16, device="cuda")
    # accumulate=False, as in the bench's graph timing: the gradients are returned, not added into
    # .grad, so the profile holds no bf16 add kernels of the harness's own (three per call, 4 % at 4k).
    run = bench_attention._cycle(bench_attention.build_method(method), bench_attention.input_sets_for(q, k, v, 2),
                                 True, accumulate=False)
    # The calls run back to back: under a power cap the clock may fall below the single-call one.
    with ClockSampler() as sampler:  # started before the warm-up, so that it is sampling by the profiled calls
        for _ in range(warmup):
            run()
        torch.cuda.synchronize()
        with sampler.window() as clocks, profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                run()
            torch.cuda.synchronize()
    kernels = per_call_ms(prof.key_averages(), calls)
    return {"method": method, "n": n, "d": d, "regime": str(regime), "kernels": kernels,
            "total_ms": sum(ms for _, ms, _ in kernels), "sm_mhz": clocks.sm_mhz, "power_w": clocks.power_w}


def case_label(case: dict) -> str:
    return f"{case['method']} N={case['n']} D={case['d']} {case['regime']}"


def format_case(case: dict, top: int = 12) -> str:
    clock = "" if case.get("sm_mhz") is None else f" (SM {case['sm_mhz']:.0f} MHz, {case['power_w']:.0f} W)"
    lines = [f"== {case_label(case)}: {case['total_ms']:.3f} ms of kernels per forward+backward{clock}"]
    lines += [f"   {ms:8.3f} ms  x{count:g}  {name[:90]}" for name, ms, count in case["kernels"][:top]]
    return "\n".join(lines)


def side_by_side(runs: list[tuple[str, list[dict]]]) -> str:
    """One table per case present in every run: each kernel's ms per call in each run, and the
    change of every later run against the first."""
    first_label, first_cases = runs[0]
    out = []
    for case in first_cases:
        matches = [next((c for c in cases if case_label(c) == case_label(case)), None) for _, cases in runs[1:]]
        if None in matches:
            continue
        columns = [case] + matches
        times = [{name: ms for name, ms, _ in c["kernels"]} for c in columns]
        names = [name for name, _, _ in case["kernels"]]
        names += [name for t in times[1:] for name in t if name not in names]
        header = " | ".join(label for label, _ in runs)
        out.append(f"{case_label(case)}\n\n| kernel | {header} |\n|---|" + "---|" * len(runs))
        for name in names + ["all kernels"]:
            values = [c["total_ms"] for c in columns] if name == "all kernels" else [t.get(name, 0.0) for t in times]
            cells = [f"{values[0]:.3f}"]
            for value in values[1:]:
                change = f" ({(value / values[0] - 1) * 100:+.0f} %)" if values[0] > 0 else ""
                cells.append(f"{value:.3f}{change}")
            out.append(f"| {name[:60]} | " + " | ".join(cells) + " |")
        out.append("")
    if not out:
        raise ValueError(f"no case is present in every run (first run: {first_label})")
    return "\n".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seqlens", type=int, nargs="+", default=[8192])
    p.add_argument("--head-dims", type=int, nargs="+", default=[64])
    p.add_argument("--regimes", nargs="+", default=["trained"], help="regime names or temperatures")
    p.add_argument("--methods", nargs="+", default=["ours"], choices=bench_attention.METHODS)
    p.add_argument("--calls", type=int, default=20, help="forward+backward calls profiled per case")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", help="write the cases to this JSON file")
    p.add_argument("--from-json", nargs="+", metavar="FILE",
                   help="no measuring: print these runs side by side (labelled by file name)")
    args = p.parse_args(argv)
    args.regimes = [bench_attention._regime_arg(r) for r in args.regimes]
    if args.calls < 1 or args.warmup < 0:
        p.error("--calls must be at least 1 and --warmup at least 0")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.from_json:
        runs = [(Path(path).stem, json.loads(Path(path).read_text())["cases"]) for path in args.from_json]
        print(side_by_side(runs))
        return [case for _, cases in runs for case in cases]
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("kernel_times profiles CUDA kernels and needs a GPU; --from-json tabulates saved runs "
                         "on any machine")
    cases = profile_cases(args)
    compiled = compiled_kernels(sys.modules["kernels.entmax_attention"]) if "ours" in args.methods else []
    for info in compiled:
        print(f"   [{info['kernel']}] {info['registers']} registers, {info['spills']} B spilled, "
              f"{info['shared']} B shared, {info['warps']} warps")
    if args.json:
        save_run(args.json, cases, compiled, complete=True)
    return cases


def profile_cases(args) -> list[dict]:
    """Every (N, head dim, regime, method) case profiled. With --json the file is rewritten after
    each case (complete: false, no compiled kernels yet), so a run cut short by a time limit keeps
    the cases it finished."""
    cases = []
    for n in args.seqlens:
        for d in args.head_dims:
            for regime in args.regimes:
                for method in args.methods:
                    case = profile_case(method, n, d, regime, args.calls, args.warmup)
                    cases.append(case)
                    print(format_case(case), flush=True)
                    if args.json:
                        save_run(args.json, cases, [], complete=False)
    return cases


def save_run(path, cases: list[dict], compiled: list[dict], complete: bool) -> None:
    bench_attention.save_json({"cases": cases, "compiled": compiled, "complete": complete,
                               "environment": bench_attention.environment()}, path)


if __name__ == "__main__":
    main()
