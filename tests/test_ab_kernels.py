"""scripts/ab_kernels.py: the A/B driver behind docs/benchmarks.md §1d."""

import json
from pathlib import Path

import pytest

from scripts import ab_kernels

DATA = Path(__file__).resolve().parent.parent / "docs" / "benchmarks_data" / "2026-11-25_h100_ab2"


def test_rounds_alternate_the_order():
    assert ab_kernels.schedule(["a", "b", "c"], 3) == [(1, "a"), (1, "b"), (1, "c"), (2, "c"), (2, "b"), (2, "a"),
                                                       (3, "a"), (3, "b"), (3, "c")]


def test_table_of_the_recorded_stop_residual_runs():
    text = ab_kernels.table(DATA / "call3_stop")
    lines = text.splitlines()
    assert lines[0] == "| N | D | regime | block sparsity | e8 fwd/f+b ms | e8c2 fwd/f+b ms |"
    row = next(line for line in lines if line.startswith("| 8192 | 64 | trained |"))
    # values as docs/benchmarks.md §1d quotes them, round 1 then round 2
    assert row.endswith("| 56.6% | 1.552/2.238, 1.560/2.252 | 1.498/2.167, 1.499/2.178 |")
    assert len(lines) == 2 + 4


def _fake_variant(root: Path, name: str, fwd_ms: float) -> Path:
    """A folder whose scripts.bench_attention writes one `ours` row with a fixed time."""
    folder = root / name
    (folder / "kernels").mkdir(parents=True)
    (folder / "scripts").mkdir()
    (folder / "scripts" / "__init__.py").write_text("")
    row = {"method": "ours", "n": 64, "d": 16, "regime": "trained", "block_sparsity": 0.5, "fwd_ms": fwd_ms,
           "fwd_bwd_ms": None}
    (folder / "scripts" / "bench_attention.py").write_text(
        "import json, sys\n"
        "assert sys.argv[1:5] == ['--methods', 'ours', '--seqlens', '64'], sys.argv\n"
        f"json.dump({{'meta': {{}}, 'rows': [{row!r}]}}, open(sys.argv[-1], 'w'))\n")
    return folder


def test_runs_each_variant_in_its_own_folder(tmp_path, capsys):
    base = _fake_variant(tmp_path, "base", 2.0)
    new = _fake_variant(tmp_path, "new", 1.5)
    out = tmp_path / "ab"
    text = ab_kernels.main(["--variants", str(base), str(new), "--rounds", "2", "--out", str(out), "--",
                            "--seqlens", "64"])
    assert sorted(p.name for p in out.iterdir()) == ["base_r1.json", "base_r2.json", "new_r1.json", "new_r2.json"]
    assert "| 64 | 16 | trained | 50.0% | 2.000/-, 2.000/- | 1.500/-, 1.500/- |" in text
    assert json.loads((out / "new_r2.json").read_text())["rows"][0]["fwd_ms"] == 1.5


def test_rejects_folders_without_kernels(tmp_path):
    with pytest.raises(SystemExit):
        ab_kernels.main(["--variants", str(tmp_path), "--out", str(tmp_path / "ab")])


CALL5 = Path(__file__).resolve().parent.parent / "docs" / "benchmarks_data" / "2026-11-30_h200_s10" / "kernel_times_call5"


def test_kernel_table_of_the_recorded_dq_stages_runs():
    text = ab_kernels.kernel_table(CALL5, ["d128_main", "d128_dq", "d128_out"])
    lines = text.splitlines()
    assert lines[0] == "GPU ms per call, mean over rounds"
    case = lines.index("ours N=8192 D=128 trained")
    assert lines[case + 2] == "| kernel | d128_main | d128_dq | d128_out |"
    rows = {line.split(" | ")[0][2:]: line for line in lines[case + 4:case + 14] if line.startswith("| ")}
    # the means docs/benchmarks.md §1j (call 5) quotes
    assert rows["_entmax_attention_bwd_dq_kernel"].startswith("| _entmax_attention_bwd_dq_kernel | 0.389 | 0.344 (-12 %) |")
    assert rows["_entmax_attention_output_kernel"].endswith("| 0.383 (+7 %) |")
    assert rows["all kernels"].startswith("| all kernels | 2.071 | 2.027 (-2 %) |")
    assert "| d128_dq | _entmax_attention_bwd_dq_kernel | 179 | 0 | 98304 | 4 |" in lines


def _fake_kernel_times_variant(root: Path, name: str, dq_ms: float) -> Path:
    """A folder whose scripts.kernel_times writes one case, or with no --json (the compiling run)
    leaves a note of its arguments."""
    folder = root / name
    (folder / "kernels").mkdir(parents=True)
    (folder / "scripts").mkdir()
    (folder / "scripts" / "__init__.py").write_text("")
    case = {"method": "ours", "n": 64, "d": 16, "regime": "trained",
            "kernels": [["_entmax_attention_bwd_dq_kernel", dq_ms, 1.0], ["_entmax_attention_tau_kernel", 1.0, 1.0]]}
    (folder / "scripts" / "kernel_times.py").write_text(
        "import json, sys\n"
        "assert sys.argv[1:5] == ['--methods', 'ours', '--seqlens', '64'], sys.argv\n"
        "if '--json' not in sys.argv:\n"
        "    open('compiled.txt', 'w').write(' '.join(sys.argv[5:]))\n"
        "else:\n"
        f"    json.dump({{'cases': [{case!r}], 'compiled': []}}, open(sys.argv[-1], 'w'))\n")
    return folder


def test_kernel_times_tool_compiles_every_variant_first_then_tables_the_means(tmp_path):
    base = _fake_kernel_times_variant(tmp_path, "base", 2.0)
    new = _fake_kernel_times_variant(tmp_path, "new", 1.5)
    out = tmp_path / "ab"
    text = ab_kernels.main(["--tool", "kernel_times", "--compile-first", "--variants", str(base), str(new),
                            "--rounds", "2", "--out", str(out), "--", "--seqlens", "64"])
    for folder in (base, new):
        assert (folder / "compiled.txt").read_text() == "--calls 1 --warmup 1"
    assert sorted(p.name for p in out.iterdir()) == ["base_r1.json", "base_r2.json", "new_r1.json", "new_r2.json"]
    assert "| _entmax_attention_bwd_dq_kernel | 2.000 | 1.500 (-25 %) |" in text
    assert "| all kernels | 3.000 | 2.500 (-17 %) |" in text
