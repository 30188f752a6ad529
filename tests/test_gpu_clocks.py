"""scripts/gpu_clocks.py: the SM clock and power sampled beside a measurement (nvidia-smi on a GPU
machine; a fake sampler here)."""

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


def test_parse_samples_skips_what_is_not_two_numbers():
    text = "clocks.sm [MHz], power.draw [W]\n1980, 157.20\n[N/A], [N/A]\n1740, 493.06\n17"
    assert gpu_clocks.parse_samples(text) == [(1980.0, 157.2), (1740.0, 493.06)]


def test_clock_log_averages_what_the_sampler_printed_during_its_block():
    with gpu_clocks.ClockLog(command=[sys.executable, "-c", FAKE_SAMPLER]) as clocks:
        time.sleep(0.5)
    assert len(clocks.samples) >= 4
    assert set(clocks.samples) <= {(1800.0, 300.5), (1700.0, 250.0)}
    assert clocks.sm_mhz == pytest.approx(sum(s[0] for s in clocks.samples) / len(clocks.samples))
    assert clocks.power_w == pytest.approx(sum(s[1] for s in clocks.samples) / len(clocks.samples))
    assert 1700 <= clocks.sm_mhz <= 1800 and 250 <= clocks.power_w <= 300.5


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-sampler case needs a machine without CUDA")
def test_clock_log_is_empty_without_a_gpu_or_sampler(monkeypatch):
    with gpu_clocks.ClockLog() as clocks:  # no CUDA: nothing is started
        pass
    assert clocks.samples == [] and clocks.sm_mhz is None and clocks.power_w is None
    with gpu_clocks.ClockLog(command=["/nonexistent/nvidia-smi"]) as clocks:
        pass
    assert clocks.sm_mhz is None
    monkeypatch.setattr(gpu_clocks.shutil, "which", lambda name: None)
    assert gpu_clocks.nvidia_smi_command("0", 50) is None
    monkeypatch.setattr(gpu_clocks.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    command = gpu_clocks.nvidia_smi_command("GPU-1234", 50)
    assert command[0] == "/usr/bin/nvidia-smi" and "--id=GPU-1234" in command and "--loop-ms=50" in command


def test_device_id_follows_cuda_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_clocks.cuda_device_id(1) == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, GPU-abcd")
    assert gpu_clocks.cuda_device_id(0) == "3" and gpu_clocks.cuda_device_id(1) == "GPU-abcd"


def test_bench_rows_carry_the_clock_and_old_files_still_load(monkeypatch, tmp_path):
    """bench_case records the clock of the fwd+bwd timing (the forward's without a backward), the
    table prints it, and JSON files written before the fields existed still load."""
    readings = iter([(1950.0, 200.0), (1800.0, 420.0)])

    class FakeClockLog:
        def __enter__(self):
            self.sm_mhz, self.power_w = next(readings)
            return self

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(bench_attention, "ClockLog", FakeClockLog)
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
