"""One comparison report from training logs and evaluation results.

    python -m evals.report runs=[runs/entmax_8k,runs/softmax_8k] results=[runs/evals/sweep_X] \\
        out=docs/report.md html=true

``runs``: training run folders (their Lightning ``metrics.csv`` files give loss curves and tokens/s);
``results``: results.jsonl files or folders holding them (from ``python -m evals``). Writes the
markdown (and, with ``html=true``, an HTML twin) plus PNG figures next to it. Lengths beyond a
model's training context are marked with a dagger.
"""

from __future__ import annotations

import html as html_lib
import math
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from evals.results import read_rows

BEYOND = "†"
SECTIONS = ("Training loss", "Throughput", "Attention sparsity per layer", "RULER", "Needle in a haystack", "Synthetic retrieval (in-distribution)",
            "entmax − softmax", "lm-eval")
SYNTHETIC_METRIC = "exact_match"  # the synthetic eval's headline metric (token_accuracy rides along)


# ---------------------------------------------------------------------------- training logs


def load_training_log(run_dir: str | Path):
    """Every metrics.csv under a run folder, concatenated (a resumed run logs a new version)."""
    import pandas as pd

    def launch_number(file: Path) -> tuple[int, str]:  # csv/version_10 comes after version_2
        match = re.search(r"version_(\d+)", str(file))
        return (int(match.group(1)) if match else -1, str(file))

    files = sorted(Path(run_dir).rglob("metrics.csv"), key=launch_number)
    if not files:
        return None
    frames = []
    for file in files:
        frame = pd.read_csv(file)
        if "step" in frame.columns and len(frame):
            # a resumed launch restarts at its checkpoint's step: the earlier launch's rows from that
            # step on were lost progress, superseded by the new ones
            first_step = frame["step"].min()
            frames = [f[f["step"] < first_step] if "step" in f.columns else f for f in frames]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True, sort=False)


def loss_columns(frame) -> list[str]:
    return [c for c in frame.columns if re.fullmatch(r"(train|val)[/_]loss(_step|_epoch)?", c)]


def throughput_column(frame) -> str | None:
    candidates = [c for c in frame.columns if "tokens_per_sec" in c or "tok_per_s" in c]
    return candidates[0] if candidates else None


def plot_loss_curves(logs: dict[str, Any], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for label, frame in logs.items():
        if "step" not in frame.columns:
            continue
        for column in loss_columns(frame):
            points = frame[["step", column]].dropna().sort_values("step")
            if points.empty:
                continue
            style = "-" if column.startswith("train") else "o--"
            values = points[column].rolling(max(len(points) // 50, 1), min_periods=1).mean() \
                if column.startswith("train") else points[column]
            ax.plot(points["step"], values, style, label=f"{label} {column}", markersize=3)
            drawn = True
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def training_summary(logs: dict[str, Any]) -> list[list[str]]:
    def column(frame, name):
        return frame[name].dropna() if name in frame.columns else frame.iloc[0:0, 0]

    rows = []
    for label, frame in logs.items():
        speed = throughput_column(frame)
        speeds = frame[speed].dropna() if speed else []
        step_ms, peak, sparsity = (column(frame, c) for c in ("step_time_ms", "peak_mem_gib", "attn/block_sparsity"))
        train = [c for c in loss_columns(frame) if c.startswith("train")]
        val = [c for c in loss_columns(frame) if c.startswith("val")]
        steps = frame["step"].dropna() if "step" in frame.columns else []
        rows.append([
            label,
            _fmt(speeds.median(), 0) if len(speeds) else "–",
            _fmt(step_ms.median(), 1) if len(step_ms) else "–",
            _fmt(peak.max(), 2) if len(peak) else "–",
            _fmt(sparsity.iloc[-1], 3) if len(sparsity) else "–",
            str(int(steps.max())) if len(steps) else "–",
            _fmt(frame[train[0]].dropna().iloc[-1], 3) if train and frame[train[0]].notna().any() else "–",
            _fmt(frame[val[0]].dropna().min(), 3) if val and frame[val[0]].notna().any() else "–",
        ])
    return rows


def layer_sparsity(logs: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Last logged value of each per-layer attention statistic (entmax block sparsity, the block
    methods' selected-block fraction): one row per (run, statistic), one column per layer."""
    found = {}
    for label, frame in logs.items():
        for stat in ("block_sparsity", "selected_block_fraction"):
            columns = {int(m.group(1)): c for c in frame.columns
                       if (m := re.fullmatch(rf"attn/{stat}_layer(\d+)", c))}
            values = {layer: frame[c].dropna() for layer, c in columns.items()}
            values = {layer: v.iloc[-1] for layer, v in values.items() if len(v)}
            if values:
                found[(label, stat)] = values
    n_layers = max((max(v) + 1 for v in found.values()), default=0)
    body = [[label, stat] + [_fmt_or_dash(values.get(layer), 3) for layer in range(n_layers)]
            for (label, stat), values in found.items()]
    return ["run", "statistic"] + [f"layer {i}" for i in range(n_layers)], body


# ---------------------------------------------------------------------------- eval results


def latest_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (run, task, subtask, length, depth, metric): the last one written wins.

    The metric is part of the key for lm-eval and the synthetic eval (one row per metric); a
    synthetic unit's rows replace all of that unit's earlier ones, so a rerun that succeeds drops
    an earlier failure (an error row carries no metric) and a rerun that fails drops old scores."""
    kept: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        unit = (row.get("run"), row.get("task"), row.get("subtask"), row.get("length"), row.get("depth"))
        if row.get("task") == "synthetic":
            stale = [key for key in kept if key[:5] == unit
                     and (row.get("error") or kept[key].get("error"))]
            for key in stale:
                del kept[key]
        key = unit + (row.get("metric") if row.get("task") in ("lm_eval", "synthetic") else None,)
        kept[key] = row
    return list(kept.values())


def train_lengths(rows: list[dict[str, Any]]) -> dict[str, int | None]:
    return {row["run"]: row.get("train_length") for row in rows if row.get("run")}


def attention_of(rows: list[dict[str, Any]]) -> dict[str, str]:
    return {row["run"]: str(row.get("attention", "unknown")) for row in rows if row.get("run")}


def length_label(length: int, train_length: int | None) -> str:
    text = f"{length // 1024}k" if length % 1024 == 0 else str(length)
    return text + (BEYOND if train_length is not None and length > train_length else "")


def ruler_table(rows: list[dict[str, Any]], run: str, train_length: int | None) -> tuple[list[str], list[list[str]]]:
    """Task x length table of one run, with the average over tasks as the last row (only where the
    run has a score for every task that any run in ``rows`` ran)."""
    every_task = subtasks(rows, "ruler")
    mine = [r for r in rows if r.get("run") == run and r.get("task") == "ruler" and r.get("length") is not None]
    lengths = sorted({int(r["length"]) for r in mine})
    tasks = list(dict.fromkeys(r["subtask"] for r in mine))
    cell = {(r["subtask"], int(r["length"])): r for r in mine}
    body = []
    for task in tasks:
        body.append([task] + [_score_cell(cell.get((task, length))) for length in lengths])
    body.append(["**average**"] + [_fmt_or_dash(ruler_average(mine, length, every_task)) for length in lengths])
    return ["task"] + [length_label(length, train_length) for length in lengths], body


def subtasks(rows: list[dict[str, Any]], task: str) -> set[str]:
    """Every subtask of ``task`` that these rows ran (at any length, failed ones included)."""
    return {r["subtask"] for r in rows if r.get("task") == task and r.get("subtask")}


def task_average(rows: list[dict[str, Any]], task: str, length: int, tasks: set[str] | None = None,
                 metric: str | None = None) -> float | None:
    """Mean score of ``task`` (rows of ``metric`` only, when given) over the subtasks ``tasks``
    (default: every subtask these rows ran, at any length); None when one of them has no score at
    this length (failed or not run), so every average covers the same subtasks. A report passes the
    subtasks of all its runs, so runs are compared over the same set too."""
    mine = [r for r in rows if r.get("task") == task]
    tasks = subtasks(mine, task) if tasks is None else set(tasks)
    scores = {r["subtask"]: r["score"] for r in mine if (metric is None or r.get("metric") == metric)
              and r.get("length") is not None and int(r["length"]) == length and r.get("score") is not None}
    if not tasks or set(scores) != tasks:
        return None
    return sum(scores.values()) / len(scores)


def ruler_average(rows: list[dict[str, Any]], length: int, tasks: set[str] | None = None) -> float | None:
    """The RULER average at ``length`` (see ``task_average``)."""
    return task_average(rows, "ruler", length, tasks)


def needle_average(rows: list[dict[str, Any]], length: int) -> float | None:
    scores = [r["score"] for r in rows if r.get("task") == "niah" and r.get("score") is not None
              and int(r["length"]) == length]
    return sum(scores) / len(scores) if scores else None


def synthetic_table(rows: list[dict[str, Any]], run: str, train_length: int | None) -> tuple[list[str], list[list[str]]]:
    """Task x length table of one run's synthetic results: exact match, token accuracy in
    parentheses; the last row averages over the tasks that any run in ``rows`` ran, as for RULER."""
    every_task = subtasks(rows, "synthetic")
    mine = [r for r in rows if r.get("run") == run and r.get("task") == "synthetic" and r.get("length") is not None]
    lengths = sorted({int(r["length"]) for r in mine})
    tasks = list(dict.fromkeys(r["subtask"] for r in mine))
    cell = {(r["subtask"], int(r["length"]), r.get("metric")): r for r in mine}

    def both(exact: float | None, tokens: float | None) -> str:
        return _fmt_or_dash(exact) + (f" ({_fmt(tokens, 1)})" if exact is not None and tokens is not None else "")

    def text(task, length):
        exact, tokens = cell.get((task, length, SYNTHETIC_METRIC)), cell.get((task, length, "token_accuracy"))
        if exact is None:
            error = cell.get((task, length, None))
            return "error" if error is not None and error.get("error") else "–"
        return both(exact.get("score"), tokens.get("score") if tokens else None)

    body = [[task] + [text(task, length) for length in lengths] for task in tasks]
    body.append(["**average**"] + [both(synthetic_average(mine, length, tasks=every_task),
                                        synthetic_average(mine, length, "token_accuracy", every_task))
                                   for length in lengths])
    return ["task"] + [length_label(length, train_length) for length in lengths], body


def synthetic_average(rows: list[dict[str, Any]], length: int, metric: str = SYNTHETIC_METRIC,
                      tasks: set[str] | None = None) -> float | None:
    """The synthetic tasks' mean ``metric`` at ``length`` (see ``task_average``)."""
    return task_average(rows, "synthetic", length, tasks, metric)


def attention_difference(rows: list[dict[str, Any]], first: str = "entmax", second: str = "softmax"):
    """Per length: mean score of ``first``-attention runs, of ``second`` ones, and the difference,
    for the RULER average, the needle grid average and the synthetic average (exact match)."""
    attention = attention_of(rows)
    # every run is averaged over the same RULER tasks, and the same synthetic ones
    ruler_set, synthetic_set = subtasks(rows, "ruler"), subtasks(rows, "synthetic")
    table = []
    for task, kind, average in (("RULER avg", "ruler", lambda r, n: ruler_average(r, n, ruler_set)),
                                ("needle avg", "niah", needle_average),
                                ("synthetic avg", "synthetic",
                                 lambda r, n: synthetic_average(r, n, tasks=synthetic_set))):
        lengths = sorted({int(r["length"]) for r in rows if r.get("task") == kind and r.get("length") is not None})
        for length in lengths:
            means = []
            for wanted in (first, second):
                runs = [run for run, name in attention.items() if name == wanted]
                values = [average([r for r in rows if r.get("run") == run], length) for run in runs]
                values = [v for v in values if v is not None]
                means.append(sum(values) / len(values) if values else None)
            if None in means:
                continue
            lengths_trained = [t for t in train_lengths(rows).values() if t]
            beyond = bool(lengths_trained) and length > min(lengths_trained)
            table.append([task, f"{length}{BEYOND if beyond else ''}", _fmt(means[0], 1), _fmt(means[1], 1),
                          f"{means[0] - means[1]:+.1f}"])
    return table


def plot_needle_heatmaps(rows: list[dict[str, Any]], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from evals.niah import plot_heatmap

    runs = list(dict.fromkeys(r["run"] for r in rows if r.get("task") == "niah" and r.get("score") is not None))
    if not runs:
        return False
    trained = train_lengths(rows)
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 4.5), squeeze=False)
    for ax, run in zip(axes[0], runs):
        cells = [r for r in rows if r.get("run") == run and r.get("task") == "niah" and r.get("score") is not None]
        plot_heatmap(cells, path, title=f"{run} ({attention_of(rows).get(run)})", train_length=trained.get(run), ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def lm_eval_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    mine = [r for r in rows if r.get("task") == "lm_eval" and r.get("score") is not None]
    runs = list(dict.fromkeys(r["run"] for r in mine))
    metrics = list(dict.fromkeys((r["subtask"], r["metric"]) for r in mine))
    cell = {(r["run"], r["subtask"], r["metric"]): r["score"] for r in mine}
    body = [[task, metric] + [_fmt_or_dash(cell.get((run, task, metric)), 4) for run in runs] for task, metric in metrics]
    return ["task", "metric"] + runs, body


# ---------------------------------------------------------------------------- assembly


def build_report(run_dirs: list[str | Path], result_paths: list[str | Path], out: str | Path, *,
                 title: str = "adasplash-train: evaluation report", write_html: bool = False) -> Path:
    """Write the markdown report (and figures, and optionally HTML) and return its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figures = out.parent / f"{out.stem}_figures"
    figures.mkdir(exist_ok=True)
    rows = latest_rows(read_rows(result_paths)) if result_paths else []
    logs = {}
    for run_dir in run_dirs:
        frame = load_training_log(run_dir)
        if frame is None:
            raise FileNotFoundError(f"no metrics.csv under {run_dir} (a training run folder, e.g. runs/<run_name>)")
        logs[Path(run_dir).name] = frame

    lines = [f"# {title}", "", f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `python -m evals.report`.", ""]
    lines += _inputs_section(run_dirs, result_paths, rows)
    lines += ["## Training loss", ""]
    if logs and plot_loss_curves(logs, figures / "loss_curves.png"):
        lines += [f"![loss curves]({figures.name}/loss_curves.png)", ""]
    else:
        lines += ["No training logs given (`runs=[...]`).", ""]
    lines += ["## Throughput", ""]
    if logs:
        lines += _table(["run", "tokens/s (median)", "step ms (median)", "peak GPU GiB", "attn block sparsity (last)",
                         "last logged step", "last train loss", "best val loss"], training_summary(logs))
    else:
        lines += ["No training logs given.", ""]
    lines += _sparsity_section(logs)
    lines += _ruler_section(rows)
    lines += ["## Needle in a haystack", ""]
    if plot_needle_heatmaps(rows, figures / "needle_heatmaps.png"):
        lines += ["Exact match (%) of the first generated word; the dashed line marks the training context.", "",
                  f"![needle heatmaps]({figures.name}/needle_heatmaps.png)", ""]
    else:
        lines += ["No needle results.", ""]
    lines += _synthetic_section(rows)
    lines += ["## entmax − softmax", ""]
    difference = attention_difference(rows)
    if difference:
        lines += ["Mean score of entmax-attention runs minus softmax ones (points; positive: entmax better).", ""]
        lines += _table(["benchmark", "length", "entmax", "softmax", "difference"], difference)
    else:
        lines += ["Needs results of at least one entmax and one softmax model at a common length.", ""]
    lines += ["## lm-eval", ""]
    header, body = lm_eval_table(rows)
    lines += _table(header, body) if body else ["No lm-eval results.", ""]
    lines += _errors_section(rows)
    text = "\n".join(lines) + "\n"
    out.write_text(text, encoding="utf-8")
    if write_html:
        out.with_suffix(".html").write_text(markdown_to_html(text, title), encoding="utf-8")
    return out


def _inputs_section(run_dirs, result_paths, rows) -> list[str]:
    lines = ["## Models", ""]
    trained, attention = train_lengths(rows), attention_of(rows)
    body = [[run, attention.get(run, "?"), str(trained.get(run) or "?"),
             str(next((r.get("ckpt") for r in rows if r.get("run") == run), ""))] for run in trained]
    lines += _table(["run", "attention", "training length", "checkpoint"], body) if body else ["No evaluation results given.", ""]
    lines += [f"{BEYOND}: length beyond the model's training context (extrapolation).", ""]
    sources = {r.get("haystack_source") for r in rows if r.get("haystack_source")}
    if "pydoc_data.topics" in sources:
        lines += ["Note: some essay haystacks used the stdlib fallback text (no Paul Graham essays installed), "
                  "so those RULER numbers are not comparable with published ones.", ""]
    return lines


def _sparsity_section(logs) -> list[str]:
    lines = ["## Attention sparsity per layer", ""]
    header, body = layer_sparsity(logs)
    if not body:
        return lines + ["No per-layer attention statistics in the training logs (softmax runs log none).", ""]
    return lines + ["Last logged value per layer: `block_sparsity` is the fraction of (query tile, key tile) "
                    "blocks the attention kernel can skip (entmax: all probabilities zero; block-selection "
                    "methods: no query of the tile selected the key block); `selected_block_fraction` is the "
                    "share of visible key blocks the block-selection methods attend.", ""] + _table(header, body)


def _ruler_section(rows) -> list[str]:
    lines = ["## RULER", ""]
    runs = list(dict.fromkeys(r["run"] for r in rows if r.get("task") == "ruler"))
    if not runs:
        return lines + ["No RULER results.", ""]
    lines += ["Scores in percent (string_match_all / string_match_part, RULER's scoring).", ""]
    return lines + _per_run_tables(rows, runs, ruler_table)


def _synthetic_section(rows) -> list[str]:
    lines = ["## Synthetic retrieval (in-distribution)", ""]
    runs = list(dict.fromkeys(r["run"] for r in rows if r.get("task") == "synthetic"))
    if not runs:
        return lines + ["No synthetic results.", ""]
    lines += ["The training mixture's own tasks (kv_retrieval, copy, variable_tracking) on held-out filler, "
              "teacher-forced: exact match (%) of the whole answer, token accuracy (%) in parentheses. "
              "In-distribution for models trained with synthetic documents: it tests how far a learned "
              "retrieval skill extrapolates in length, not general ability.", ""]
    fillers = sorted({str(r["filler"]) for r in rows if r.get("task") == "synthetic" and r.get("filler")})
    not_held_out = [f for f in fillers if not f.startswith("val:")]
    if not_held_out:
        lines += [f"Note: filler from {', '.join(not_held_out)} rather than the run's validation split.", ""]
    return lines + _per_run_tables(rows, runs, synthetic_table)


def _per_run_tables(rows, runs, make_table) -> list[str]:
    """One `### run` table per run from make_table(rows, run, training length)."""
    trained = train_lengths(rows)
    lines = []
    for run in runs:
        header, body = make_table(rows, run, trained.get(run))
        lines += [f"### {run}", ""] + _table(header, body)
    return lines


def _errors_section(rows) -> list[str]:
    failed = [r for r in rows if r.get("error")]
    if not failed:
        return []
    lines = ["## Errors", "", "Units of work that failed (their other results are above).", ""]
    body = [[str(r.get("run")), str(r.get("task")), str(r.get("subtask")), str(r.get("length")),
             str(r.get("error")).replace("|", "/")[:160]] for r in failed]
    return lines + _table(["run", "task", "subtask", "length", "error"], body)


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines + [""]


def _score_cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "–"
    if row.get("error"):
        return "error"
    return _fmt(row["score"], 1)


def _fmt(value, digits: int) -> str:
    value = float(value)
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def _fmt_or_dash(value, digits: int = 1) -> str:
    return "–" if value is None else _fmt(value, digits)


def markdown_to_html(text: str, title: str) -> str:
    """The report's own small markdown subset (headings, tables, images, paragraphs) as HTML."""
    out, table = [], []

    def inline(chunk: str) -> str:
        chunk = html_lib.escape(chunk)
        chunk = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", chunk)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", chunk)

    def flush_table():
        if table:
            rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table]
            head, body = rows[0], [r for r in rows[2:]]
            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</table>")
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        image = re.fullmatch(r"!\[(.*)\]\((.*)\)", line.strip())
        heading = re.match(r"(#+) (.*)", line)
        if image:
            out.append(f'<p><img alt="{html_lib.escape(image.group(1))}" src="{html_lib.escape(image.group(2))}"></p>')
        elif heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html_lib.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def parse_arguments(argv: list[str]) -> dict[str, Any]:
    """``key=value`` arguments (lists as ``[a,b]``), like the other entry points."""
    from omegaconf import OmegaConf

    allowed = {"runs", "results", "out", "html", "title"}
    cli = OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    unknown = set(cli) - allowed
    if unknown:
        raise SystemExit(f"unknown argument(s) {sorted(unknown)}; use runs=[dirA,dirB] results=[fileOrDir,...] "
                         "out=docs/report.md html=true title='...'")
    def as_list(value):
        return [] if value is None else [str(v) for v in (value if isinstance(value, list) else [value])]

    if not cli.get("runs") and not cli.get("results"):
        raise SystemExit("nothing to report: pass runs=[training run dirs] and/or results=[results.jsonl or sweep dirs]")
    return {"run_dirs": as_list(cli.get("runs")), "result_paths": as_list(cli.get("results")),
            "out": cli.get("out", "docs/report.md"), "write_html": bool(cli.get("html", False)),
            "title": cli.get("title", "adasplash-train: evaluation report")}


def main(argv: list[str] | None = None) -> Path:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    out = arguments.pop("out")
    path = build_report(arguments.pop("run_dirs"), arguments.pop("result_paths"), out, **arguments)
    print(f"report written to {path}")
    return path


if __name__ == "__main__":
    main()
