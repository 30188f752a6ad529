"""scripts/kernel_times.py: per-kernel GPU time from torch.profiler (the profiling itself needs a GPU;
its bookkeeping and the side-by-side tables run here)."""

import json
from types import SimpleNamespace

import pytest
import torch

from scripts import ab_kernels, kernel_times


def event(key, device_us, count):
    return SimpleNamespace(key=key, self_device_time_total=device_us, count=count)


def case(method, n, kernels):
    return {"method": method, "n": n, "d": 64, "regime": "trained", "kernels": kernels,
            "total_ms": sum(ms for _, ms, _ in kernels)}


def test_per_call_ms_divides_by_the_calls_and_sorts():
    events = [event("dq", 3200.0, 20), event("host_only", 0.0, 20), event("tau", 11000.0, 20),
              event("add", 740.0, 60)]
    rows = kernel_times.per_call_ms(events, calls=20)
    assert [name for name, _, _ in rows] == ["tau", "dq", "add"]
    assert rows[0][1] == pytest.approx(0.55) and rows[0][2] == 1
    assert rows[2][1] == pytest.approx(0.037) and rows[2][2] == 3


def test_side_by_side_gives_each_kernels_change():
    main = [case("ours", 8192, [("tau", 0.550, 1), ("dkdv", 0.345, 1)]), case("ours", 4096, [("tau", 0.2, 1)])]
    capped = [case("ours", 8192, [("tau", 0.510, 1), ("dkdv", 0.379, 1), ("lists", 0.004, 1)])]
    table = kernel_times.side_by_side([("main", main), ("cap", capped)])
    lines = table.splitlines()
    assert lines[0] == "ours N=8192 D=64 trained"
    assert "| tau | 0.550 | 0.510 (-7 %) |" in lines
    assert "| dkdv | 0.345 | 0.379 (+10 %) |" in lines
    assert "| lists | 0.000 | 0.004 |" in lines
    assert "| all kernels | 0.895 | 0.893 (-0 %) |" in lines
    assert "N=4096" not in table  # not measured in both runs
    with pytest.raises(ValueError, match="no case"):
        kernel_times.side_by_side([("main", main[1:]), ("cap", capped)])


def test_from_json_prints_saved_runs(tmp_path, capsys):
    for label, ms in (("main", 0.550), ("variant", 0.440)):
        (tmp_path / f"{label}.json").write_text(json.dumps({"cases": [case("ours", 8192, [("tau", ms, 1)])]}))
    kernel_times.main(["--from-json", str(tmp_path / "main.json"), str(tmp_path / "variant.json")])
    assert "| tau | 0.550 | 0.440 (-20 %) |" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_without_a_gpu_it_says_what_works():
    with pytest.raises(SystemExit, match="needs a GPU; --from-json"):
        kernel_times.main(["--seqlens", "64"])


def test_json_is_saved_after_every_case(monkeypatch, tmp_path):
    """A run cut short (here: the third case fails) keeps the cases it finished in its --json file,
    marked incomplete; the table of ab_kernels reads such a file like any other."""
    def fake_profile(method, n, d, regime, calls, warmup):
        if n == 96:
            raise KeyboardInterrupt  # stands for the time limit's kill
        return case(method, n, [("tau", n / 100, 1)])

    monkeypatch.setattr(kernel_times, "profile_case", fake_profile)
    path = tmp_path / "main_r1.json"
    args = kernel_times.parse_args(["--seqlens", "32", "64", "96", "--regimes", "0.5", "--json", str(path)])
    with pytest.raises(KeyboardInterrupt):
        kernel_times.profile_cases(args)
    saved = json.loads(path.read_text())
    assert saved["complete"] is False and saved["compiled"] == []
    assert [c["n"] for c in saved["cases"]] == [32, 64]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["main_r1.json"]

    # A second, complete round: ab_kernels averages both rounds' cases and still lists what the
    # complete round compiled to (the cut round, sorted first, has none).
    compiled = [{"kernel": "tau", "registers": 128, "spills": 0, "shared": 32912, "warps": 4}]
    kernel_times.save_run(tmp_path / "main_r2.json", [case("ours", 32, [("tau", 0.52, 1)])], compiled, complete=True)
    table = ab_kernels.kernel_table(tmp_path)
    assert "| tau | 0.420 |" in table  # N = 32: (0.32 + 0.52) / 2
    assert "| main | tau | 128 | 0 | 32912 | 4 |" in table
