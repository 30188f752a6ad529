"""scripts/gpu_clocks.py: the SM clock and power sampled beside a measurement (nvidia-smi on a GPU
machine; a fake sampler here)."""

import contextlib
import json
import sys
import time
from pathlib import Path

import pytest
import torch

from scripts import bench_attention, gpu_clocks

FAKE_SAMPLER = (
    "import itertools, sys, time\n"
    "print('clocks.sm [MHz], power.draw [W]', flush=True)\n"
    "print('[N/A], [N/A]', flush=True)\n"
    "for clock, power in itertools.cycle([(1800, 300.5), (1700, 250.0)]):\n"
    "    print(f'{clock}, {power}', flush=True)\n"
    "    time.sleep(0.01)\n"
)


def test_parse_sample_takes_two_numbers_only():
    lines = ["clocks.sm [MHz], power.draw [W]", "1980, 157.20", "[N/A], [N/A]", "1740, 493.06", "17"]
    assert [gpu_clocks.parse_sample(line) for line in lines] == [None, (1980.0, 157.2), None, (1740.0, 493.06), None]


def test_windows_average_the_samples_that_arrived_during_them():
    with gpu_clocks.ClockSampler(command=[sys.executable, "-c", FAKE_SAMPLER]) as sampler:
        time.sleep(0.3)  # the sampler's start, as nvidia-smi's takes a while
        with sampler.window() as first:
            time.sleep(0.3)
        time.sleep(0.1)
        with sampler.window() as second:
            time.sleep(0.3)
        with sampler.window() as empty:
            pass
    for window in (first, second):
        assert len(window.samples) >= 4
        assert set(window.samples) <= {(1800.0, 300.5), (1700.0, 250.0)}
        assert window.sm_mhz == pytest.approx(sum(s[0] for s in window.samples) / len(window.samples))
        assert window.power_w == pytest.approx(sum(s[1] for s in window.samples) / len(window.samples))
        assert 1700 <= window.sm_mhz <= 1800 and 250 <= window.power_w <= 300.5
    every = len(sampler._samples)
    assert len(first.samples) + len(second.samples) < every  # the samples between the windows are left out
    assert empty.sm_mhz is None or len(empty.samples) <= 1
    assert sampler._process.poll() is not None  # the sampler stopped with its block


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-sampler case needs a machine without CUDA")
def test_windows_are_empty_without_a_gpu_or_sampler(monkeypatch):
    with gpu_clocks.ClockSampler() as sampler:  # no CUDA: nothing is started
        with sampler.window() as window:
            pass
    assert window.samples == [] and window.sm_mhz is None and window.power_w is None
    with gpu_clocks.ClockSampler(command=["/nonexistent/nvidia-smi"]) as sampler:
        with sampler.window() as window:
            pass
    assert window.sm_mhz is None
    monkeypatch.setattr(gpu_clocks.shutil, "which", lambda name: None)
    assert gpu_clocks.nvidia_smi_command("0", 50) is None
    monkeypatch.setattr(gpu_clocks.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    command = gpu_clocks.nvidia_smi_command("GPU-1234", 50)
    assert command[0] == "/usr/bin/nvidia-smi" and "--id=GPU-1234" in command and "--loop-ms=50" in command


def _fake_smi(tmp_path, name, output, returncode):
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\nimport sys\nprint({output!r})\nsys.exit({returncode})\n")
    path.chmod(0o755)
    return str(path)


def test_power_is_sampled_instant_where_the_driver_has_it(tmp_path):
    """power.draw (a one-second average on recent drivers) only where power.draw.instant is missing."""
    has_instant = _fake_smi(tmp_path, "smi_new", "612.34", 0)
    assert gpu_clocks.power_field(has_instant, "0") == "power.draw.instant"
    lacks_instant = _fake_smi(tmp_path, "smi_old", 'Field "power.draw.instant" is not a valid field to query.', 2)
    assert gpu_clocks.power_field(lacks_instant, "0") == "power.draw"
    not_a_number = _fake_smi(tmp_path, "smi_na", "[N/A]", 0)
    assert gpu_clocks.power_field(not_a_number, "0") == "power.draw"
    assert gpu_clocks.power_field(str(tmp_path / "missing"), "0") == "power.draw"


def test_device_id_follows_cuda_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_clocks.cuda_device_id(1) == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, GPU-abcd")
    assert gpu_clocks.cuda_device_id(0) == "3" and gpu_clocks.cuda_device_id(1) == "GPU-abcd"


def test_bench_rows_carry_the_clock_and_old_files_still_load(monkeypatch, tmp_path):
    """bench_case records the clock of the fwd+bwd timing (the forward's without a backward), the
    table prints it, and JSON files written before the fields existed still load."""
    readings = iter([(1950.0, 200.0), (1800.0, 420.0)])

    class FakeSampler(gpu_clocks.ClockSampler):
        @contextlib.contextmanager
        def window(self):
            window = gpu_clocks.ClockWindow()
            yield window
            window.samples = [next(readings)]

    monkeypatch.setattr(bench_attention, "ClockSampler", FakeSampler)
    monkeypatch.setattr(bench_attention, "time_ms", lambda attention, sets, backward, timing: 2.0 if backward else 1.0)
    monkeypatch.setattr(bench_attention, "peak_mib", lambda attention, inputs, backward: 5.0)
    q, k, v = bench_attention.make_qkv(64, 16, 0.5, seed=0, heads=2)
    rows = bench_attention.bench_case({"ours": lambda *t: None}, q, k, v, 64, 16, "trained", (0.5, "kernel"), n_sets=1)
    assert (rows[0].sm_mhz, rows[0].power_w) == (1800.0, 420.0)
    assert "| 1800, 420 |" in bench_attention.format_table(rows)
    assert "| - |" in bench_attention.format_table([bench_attention.BenchRow("ours", 64, 16, "trained")])

    old = [bench_attention.BenchRow("ours", 64, 16, "trained", fwd_ms=1.0).__dict__]
    for row in old:
        del row["sm_mhz"], row["power_w"]
    path = Path(tmp_path) / "old.json"
    path.write_text(json.dumps({"meta": {}, "rows": old}))
    loaded, _ = bench_attention.read_json([path])
    assert loaded[0].fwd_ms == 1.0 and loaded[0].sm_mhz is None
