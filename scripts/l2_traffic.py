"""Bytes each kernel of one forward+backward call moves through L2 and DRAM, from Nsight Compute.

Under the board's power cap a kernel's time follows its energy (docs/kernels.md, What remains,
Power), and moving data costs energy as well as instructions do. Our kernels take 64-row query
tiles, so every query tile reads each key tile it visits (and the dK/dV kernel each query tile):
at 8k D 128 long some 2-6 TB/s of tile loads per kernel by a count of tile visits. This reads what
the hardware counted, per kernel, for ours next to adasplash (whose autotuner may pick 128-row
tiles), so that a wider tile's saving can be sized before it is written.

`run` is the program to profile: it warms each method up (adasplash autotunes then), and only then
opens the profiler's window (cudaProfilerStart) around one forward+backward call, so that
`ncu --profile-from-start off` sees exactly one call's kernels. `table` reads ncu's raw CSV export.

    ncu --profile-from-start off --clock-control none --metrics "$(python -m scripts.l2_traffic metrics)" \\
        -o ours python -m scripts.l2_traffic run --method ours --n 8192 --d 128 --regime long
    ncu -i ours.ncu-rep --csv --page raw --print-units base > ours.csv
    python -m scripts.l2_traffic table ours.csv adasplash.csv     # any machine

(`. scripts/gpu_runs.sh setup traffic` does all three for both methods.)
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# What each table column reads (Hopper counters; `metrics --without` leaves one out should an ncu
# not know it). --print-units base gives ns, bytes and Hz; _number also reads scaled units. (A
# tensor-pipe column, sm__pipe_tensor_op_gmma_cycles_active, came back empty from the H200's ncu.)
METRICS = {
    "time": "gpu__time_duration.sum",
    "clock": "sm__cycles_elapsed.avg.per_second",
    "l2_bytes": "lts__t_bytes.sum",
    "l2_pct": "lts__throughput.avg.pct_of_peak_sustained_elapsed",
    "dram_bytes": "dram__bytes_read.sum",
    "dram_pct": "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "sm_pct": "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "instructions": "sm__inst_executed.sum",
}
# Factors to base units (byte, second, hertz) of the unit names ncu prints.
_UNIT_SCALE = {
    "": 1.0, "%": 1.0, "inst": 1.0, "byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "Tbyte": 1e12,
    "nsecond": 1e-9, "usecond": 1e-6, "msecond": 1e-3, "second": 1.0, "ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0,
    "hz": 1.0, "Khz": 1e3, "Mhz": 1e6, "Ghz": 1e9, "cycle/second": 1.0, "cycle/nsecond": 1e9, "cycle/usecond": 1e6,
}


def _number(text: str, unit: str) -> float | None:
    """A value of ncu's CSV in base units (thousands separators dropped); None if empty or 'n/a'."""
    text = text.replace(",", "").strip()
    if not text or text.lower() == "n/a":
        return None
    if unit not in _UNIT_SCALE:  # a unit this table does not know: leave the value out rather than guess
        print(f"l2_traffic: unknown ncu unit {unit!r}, value {text} left out", file=sys.stderr)
        return None
    return float(text) * _UNIT_SCALE[unit]


def read_ncu_raw_csv(path: str | Path) -> list[dict]:
    """One dict per profiled kernel launch of `ncu --csv --page raw`: its kernel name and the
    METRICS present (keys of METRICS; a metric the export lacks is left out). The export's first
    row names the columns, its second gives their units."""
    lines = [line for line in Path(path).read_text().splitlines() if line.startswith('"')]  # ncu's ==PROF== lines out
    rows = list(csv.reader(lines))
    if len(rows) < 2 or "Kernel Name" not in rows[0]:
        raise ValueError(f"{path}: not an ncu raw CSV export (ncu -i REPORT --csv --page raw --print-units base)")
    header, units, data = rows[0], rows[1], rows[2:]
    launches = []
    for values in data:
        launch = {"kernel": values[header.index("Kernel Name")]}
        for key, metric in METRICS.items():
            if metric in header:
                column = header.index(metric)
                value = _number(values[column], units[column])
                if value is not None:
                    launch[key] = value
        launches.append(launch)
    return launches


def _short(name: str) -> str:
    """A kernel's name without its argument list (ncu prints demangled names with them)."""
    return name.split("(")[0].strip()


def table(runs: list[tuple[str, list[dict]]]) -> str:
    """A markdown table: one row per kernel launch of each run, then the run's total."""
    out = ["| run | kernel | ms | MHz | L2 GB | L2 TB/s | L2 % of peak | DRAM read GB | DRAM % | SM % |"
           " G instructions |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(value, scale, spec):
        return "-" if value is None else format(value * scale, spec)

    for label, launches in runs:
        for launch in launches:
            time, l2 = launch.get("time"), launch.get("l2_bytes")
            rate = l2 / time if time and l2 is not None else None
            out.append(f"| {label} | {_short(launch['kernel'])} | {cell(time, 1e3, '.3f')} | "
                       f"{cell(launch.get('clock'), 1e-6, '.0f')} | {cell(l2, 1e-9, '.2f')} | {cell(rate, 1e-12, '.2f')} | "
                       f"{cell(launch.get('l2_pct'), 1, '.0f')} | {cell(launch.get('dram_bytes'), 1e-9, '.2f')} | "
                       f"{cell(launch.get('dram_pct'), 1, '.0f')} | {cell(launch.get('sm_pct'), 1, '.0f')} | "
                       f"{cell(launch.get('instructions'), 1e-9, '.3f')} |")
        total = {key: sum(launch.get(key, 0.0) for launch in launches)
                 for key in ("time", "l2_bytes", "dram_bytes", "instructions")}
        out.append(f"| {label} | **all** | {total['time'] * 1e3:.3f} | | {total['l2_bytes'] * 1e-9:.2f} | "
                   f"{total['l2_bytes'] / total['time'] * 1e-12 if total['time'] else 0:.2f} | | "
                   f"{total['dram_bytes'] * 1e-9:.2f} | | | {total['instructions'] * 1e-9:.3f} |")
    return "\n".join(out)


def run_one_call(method: str, n: int, d: int, regime, warmup: int) -> None:
    """Warm `method` up on the bench's inputs, then one forward+backward call inside the profiler's
    window (the gradients returned, not accumulated: no harness kernels in the window)."""
    import torch

    from scripts import bench_attention

    q, k, v = bench_attention.make_qkv(n, d, regime, dtype=torch.bfloat16, device="cuda")
    call = bench_attention._cycle(bench_attention.build_method(method), bench_attention.input_sets_for(q, k, v, 1),
                                  True, accumulate=False)
    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()  # cudaProfilerStart: ncu --profile-from-start off begins here
    call()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    metrics = commands.add_parser("metrics", help="print the --metrics list for ncu")
    metrics.add_argument("--without", nargs="*", default=[], choices=sorted(METRICS),
                         help="columns to leave out (should this ncu not know a metric)")
    run = commands.add_parser("run", help="the program to profile (one warmed-up forward+backward call)")
    run.add_argument("--method", default="ours", choices=("ours", "adasplash", "sdpa_flash", "sdpa_cudnn"))
    run.add_argument("--n", type=int, default=8192)
    run.add_argument("--d", type=int, default=128)
    run.add_argument("--regime", default="long", help="a regime name or a temperature")
    run.add_argument("--warmup", type=int, default=3)
    show = commands.add_parser("table", help="tabulate ncu raw CSV exports (labelled by file name)")
    show.add_argument("csv_files", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "metrics":
        text = ",".join(metric for key, metric in METRICS.items() if key not in args.without)
    elif args.command == "run":
        from scripts import bench_attention

        if args.warmup < 1:
            parser.error("--warmup must be at least 1 (adasplash autotunes in its first call)")
        run_one_call(args.method, args.n, args.d, bench_attention._regime_arg(args.regime), args.warmup)
        text = f"profiled one forward+backward call of {args.method}, N={args.n}, D={args.d}, {args.regime}"
    else:
        text = table([(Path(path).stem, read_ncu_raw_csv(path)) for path in args.csv_files])
    print(text)
    return text


if __name__ == "__main__":
    main()
