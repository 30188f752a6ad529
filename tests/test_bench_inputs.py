"""CPU tests of scripts/bench_attention.py: inputs, sparsity measurement, calibration, reporting."""

import contextlib
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch

from kernels import reference

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_attention.py"


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_attention", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def full_block_sparsity(q, k):
    probs = reference.entmax_attention_probs(q, k, alpha=1.5, causal=True)
    allowed = reference.allowed_mask(q.shape[2], k.shape[2], causal=True)
    return reference.block_sparsity(probs, allowed, block_m=64, block_n=64)


@pytest.mark.parametrize("regime", ["trained", "long", "sparse", 0.3])
def test_make_qk_shapes_norms_and_dtype(bench, regime):
    q, k = bench.make_qk(96, 64, regime, seed=1, batch=2, heads=3)
    assert q.shape == k.shape == (2, 3, 96, 64)
    assert q.dtype == k.dtype == torch.float32
    temp = bench.temperature_for(regime, 64)
    # RoPE is a rotation: it keeps the norms set before it.
    torch.testing.assert_close(q.norm(dim=-1), torch.full((2, 3, 96), 8.0 * temp), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(k.norm(dim=-1), torch.full((2, 3, 96), 8.0), rtol=1e-4, atol=1e-4)
    q16, _ = bench.make_qk(96, 64, regime, seed=1, batch=2, heads=3, dtype=torch.bfloat16)
    assert q16.dtype == torch.bfloat16


def test_make_qk_is_deterministic_per_seed(bench):
    first = bench.make_qkv(128, 32, 0.5, seed=3, heads=2)
    again = bench.make_qkv(128, 32, 0.5, seed=3, heads=2)
    other = bench.make_qkv(128, 32, 0.5, seed=4, heads=2)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    for a, b in zip(first, other):
        assert not torch.equal(a, b)


def test_lower_temperature_gives_lower_block_sparsity(bench):
    measured = []
    for temp in (0.6, 1.2, 2.4):
        q, k = bench.make_qk(512, 64, temp, seed=0, heads=4)
        measured.append(full_block_sparsity(q, k))
    assert measured[0] < measured[1] < measured[2]
    assert measured[2] - measured[0] > 0.2


def test_rope_is_relative(bench):
    # With RoPE, scores depend on the position offset only: shifting both positions keeps q.k.
    gen = torch.Generator().manual_seed(0)
    q0, k0 = torch.randn(2, 16, generator=gen)
    q_rows = bench.rope_rotate(q0.expand(40, 16).clone())
    k_rows = bench.rope_rotate(k0.expand(40, 16).clone())
    torch.testing.assert_close(q_rows[10] @ k_rows[3], q_rows[30] @ k_rows[23], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="even"):
        bench.rope_rotate(torch.randn(4, 5))


def test_temperature_errors(bench):
    with pytest.raises(ValueError, match="unknown regime"):
        bench.temperature_for("dense", 64)
    with pytest.raises(ValueError, match="head dim 32"):
        bench.temperature_for("trained", 32)
    with pytest.raises(ValueError, match="positive"):
        bench.temperature_for(-1.0, 64)


def test_measure_block_sparsity_falls_back_to_reference(bench):
    q, k = bench.make_qk(256, 64, 2.0, seed=0, heads=2)
    value, source = bench.measure_block_sparsity(q, k, ours=None, n_row_tiles=4)
    assert source.startswith("reference")
    assert value == pytest.approx(full_block_sparsity(q, k), abs=1e-12)


def test_calibrate_temperature_hits_target(bench):
    measure = bench.sparsity_measure(512, 64, seed=0, device="cpu", n_row_tiles=8, heads=2)
    temp, reached = bench.calibrate_temperature(measure, 0.3, lo=0.2, hi=4.0, iters=5)
    assert abs(reached - 0.3) < 0.08
    assert measure(temp) == pytest.approx(reached)
    with pytest.raises(ValueError, match="target"):
        bench.calibrate_temperature(measure, 1.5)


def test_calibrate_rejects_unreachable_target(bench):
    with pytest.raises(ValueError, match="outside"):
        bench.calibrate_temperature(lambda temp: min(0.5, temp), 0.9, lo=0.1, hi=1.0)


def test_load_qkv_file(bench, tmp_path):
    path = tmp_path / "capture.pt"
    torch.save({"q": torch.randn(4, 100, 32), "k": torch.randn(4, 100, 32)}, path)
    tensors = bench.load_qkv_file(path)
    assert tensors["q"].shape == tensors["k"].shape == tensors["v"].shape == (1, 4, 100, 32)
    torch.save({"q": torch.randn(4, 100, 32)}, path)
    with pytest.raises(ValueError, match="'q' and 'k'"):
        bench.load_qkv_file(path)
    torch.save({"q": torch.randn(4, 100, 32), "k": torch.randn(4, 90, 32)}, path)
    with pytest.raises(ValueError, match="share N and D"):
        bench.load_qkv_file(path)


def test_qk_file_cases_include_prefixes(bench, tmp_path):
    path = tmp_path / "capture.pt"
    torch.save({"q": torch.randn(1, 2, 300, 16), "k": torch.randn(1, 2, 300, 16)}, path)
    args = bench.parse_args(["--seqlens", "128", "512", "--head-dims", "16", "--regimes", "sparse", "--qk-file", str(path)])
    args.head_dims = []  # only the file's cases
    cases = [(label, n, d) for label, n, d, *_ in bench._cases(args)]
    assert cases == [("file:capture", 128, 16), ("file:capture", 300, 16)]


def fake_rows(bench):
    rows = []
    for n, flash, ada, ours in ((4096, 1.0, 2.0, 0.5), (8192, 4.0, 4.0, 2.0)):
        for method, ms in (("sdpa_flash", flash), ("adasplash", ada), ("ours", ours)):
            rows.append(bench.BenchRow(method, n, 64, "trained", 0.6, "kernel", ms, 3 * ms, 100.0))
    rows.append(bench.BenchRow("sdpa_cudnn", 8192, 64, "trained", 0.6, "kernel", 1.0, 5.0, 50.0))
    rows.append(bench.BenchRow("sdpa_cudnn", 4096, 64, "trained", 0.6, "kernel", note="out of memory"))
    return rows


def test_ratios_and_table(bench):
    rows = fake_rows(bench)
    bench.add_ratios(rows)
    ours_4k = rows[2]
    assert ours_4k.ratios["fwd/sdpa_flash"] == pytest.approx(0.5)
    assert ours_4k.ratios["fwd_bwd/adasplash"] == pytest.approx(0.25)
    assert "fwd_bwd/sdpa_cudnn" not in ours_4k.ratios  # cuDNN ran out of memory at 4k
    ours_8k = rows[5]
    assert ours_8k.ratios["fwd_bwd/sdpa_cudnn"] == pytest.approx(6.0 / 5.0)
    assert ours_8k.ratios["peak/sdpa_flash"] == pytest.approx(1.0)
    assert rows[-2].ratios["peak/sdpa_flash"] == pytest.approx(0.5)
    assert rows[-1].ratios == {}
    table = bench.format_table(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| ours | 4096 | 64 | trained | 60.0% | 0.500 | 1.500 | 100 | 0.50 | 0.50 | - | 0.25 | 0.25 | 1.00 |" in table
    assert "| ours | 8192 | 64 | trained | 60.0% | 2.000 | 6.000 | 100 | 0.50 | 0.50 | 1.20 | 0.50 | 0.50 | 1.00 |" in table
    assert "out of memory" in lines[-1]


def test_json_and_plot_outputs(bench, tmp_path):
    rows = fake_rows(bench)
    bench.add_ratios(rows)
    bench.write_json(rows, tmp_path / "out" / "bench.json", {"device": "test"})
    data = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert data["meta"]["device"] == "test" and len(data["rows"]) == len(rows)
    assert data["rows"][0]["method"] == "sdpa_flash"
    bench.plot_rows(rows, tmp_path / "bench.png", title="test")
    assert (tmp_path / "bench.png").stat().st_size > 1000


def test_json_is_saved_after_every_case(bench, monkeypatch, tmp_path):
    """A run cut short (here: the third case fails) keeps the cases it finished in its --json
    file, marked incomplete, with their ratios; a finished run is marked complete."""
    def fake_case(methods, q, k, v, n, d, label, sparsity, n_sets, backward, timing):
        if n == 96:
            raise KeyboardInterrupt  # stands for the time limit's kill
        return [bench.BenchRow(method, n, d, label, *sparsity, fwd_ms=ms, fwd_bwd_ms=2 * ms)
                for method, ms in (("adasplash", 1.0), ("ours", 0.5))]

    monkeypatch.setattr(bench, "bench_case", fake_case)
    monkeypatch.setattr(bench, "measure_block_sparsity", lambda q, k, ours, n_row_tiles: (0.5, "reference"))
    path = tmp_path / "bench.json"
    args = bench.parse_args(["--seqlens", "32", "64", "96", "--head-dims", "16", "--regimes", "0.5",
                             "--heads", "2", "--json", str(path)])
    with pytest.raises(KeyboardInterrupt):
        bench.measure_cases(args, {}, None, {"device": "test"}, device="cpu")
    data = json.loads(path.read_text())
    assert data["meta"] == {"device": "test", "complete": False}
    assert [(row["n"], row["method"]) for row in data["rows"]] == [(32, "adasplash"), (32, "ours"),
                                                                  (64, "adasplash"), (64, "ours")]
    assert data["rows"][3]["ratios"]["fwd_bwd/adasplash"] == pytest.approx(0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]

    args = bench.parse_args(["--seqlens", "32", "--head-dims", "16", "--regimes", "0.5", "--heads", "2",
                             "--json", str(path)])
    rows = bench.measure_cases(args, {}, None, {"device": "test"}, device="cpu")
    assert json.loads(path.read_text())["meta"]["complete"] is True and len(rows) == 2


def test_cli_parsing_and_cpu_behaviour(bench, capsys):
    args = bench.parse_args(["--seqlens", "4096", "--regimes", "trained", "0.25", "--methods", "ours"])
    assert args.regimes == ["trained", 0.25] and args.methods == ["ours"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--regimes", "dense"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods", "flash3"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a GPU"):
            bench.main(["--seqlens", "256"])
        bench.main(["--calibrate", "--target", "0.3", "--calib-n", "512", "--calib-d", "64", "--row-tiles", "4",
                    "--temp-range", "0.5", "4.0", "--heads", "2"])
        assert "temperature" in capsys.readouterr().out


def test_ours_n_iter_rows(bench, kernels_runnable, gen):
    """--ours-n-iter K times our kernel with K refinement passes: the callable passes K through."""
    assert bench.parse_args(["--ours-n-iter", "0", "3"]).ours_n_iter == [0, 3]
    for bad in (["--ours-n-iter", "-1"], ["--ours-n-iter", "11"], ["--ours-n-iter", "2", "--decode", "4"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
    import kernels

    q, k, v = (torch.randn(1, 2, 40, 16, generator=gen) for _ in range(3))
    for n_iter in (0, 2):
        expected = kernels.entmax_attention(q, k, v, alpha=1.5, causal=True, n_iter=n_iter)
        assert torch.equal(bench._ours(n_iter)(q, k, v), expected)
    # zero passes leave tau at the histogram bracket's midpoint, which is not the default's output
    assert not torch.equal(bench._ours(0)(q, k, v), bench._ours()(q, k, v))


def test_unknown_method_and_missing_package(bench, monkeypatch):
    with pytest.raises(ValueError, match="unknown method"):
        bench.build_method("flash3")
    monkeypatch.setitem(sys.modules, "adasplash", None)  # import fails like a missing package
    with pytest.raises(bench.MethodUnavailable, match="adasplash"):
        bench.build_method("adasplash")
    methods = bench._available_methods(["adasplash"])
    assert methods["adasplash"].startswith("skipped")


def test_regime_temperatures_are_ordered(bench):
    for d, temps in bench.REGIME_TEMPERATURES.items():
        # 'long' is anchored at 70% at 32k, 'trained' at ~57% at 8k, 'sparse' at 92% at 4k.
        assert temps["long"] < temps["trained"] < temps["sparse"], d
        assert all(math.isfinite(t) and t > 0 for t in temps.values())


def test_input_sets_rotate_and_backpropagate(bench, monkeypatch):
    q, k, v = bench.make_qkv(64, 16, 0.5, seed=0, heads=2)
    sets = bench.input_sets_for(q, k, v, n_sets=3)
    assert len(sets) == 3
    assert all(torch.equal(s[0], q) and s[0].requires_grad and s[0].data_ptr() != q.data_ptr() for s in sets)
    assert len(bench.input_sets_for(q, k, v, n_sets=3, max_set_bytes=1)) == 1

    def attention(q_, k_, v_):
        return reference.entmax_attention(q_, k_, v_)

    run = bench._cycle(attention, sets, backward=True)
    run()
    run()
    assert sets[0][0].grad is not None and sets[1][1].grad is not None and sets[2][0].grad is None
    bench._cycle(attention, sets, backward=False)()
    assert sets[0][2].grad.abs().sum() > 0
    # accumulate=False (CUDA-graph timing) runs the backward without touching .grad
    for inputs in sets:
        for t in inputs[:3]:
            t.grad = None
    calls = []
    real_grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *args, **kwargs: calls.append(real_grad(*args, **kwargs)))
    bench._cycle(attention, sets, backward=True, accumulate=False)()
    assert all(t.grad is None for inputs in sets for t in inputs[:3])
    assert len(calls) == 1 and all(g.abs().sum() > 0 for g in calls[0])


def test_bench_case_rows_and_failure_notes(bench, monkeypatch):
    def broken(q, k, v):
        raise RuntimeError("power-of-two N only\nsecond line")

    def fake_time_ms(attention, sets, backward, timing):
        assert timing == "graph"
        return attention(*sets[0][:3]) if attention is broken else 1.0

    monkeypatch.setattr(bench, "time_ms", fake_time_ms)
    monkeypatch.setattr(bench, "peak_mib", lambda attention, inputs, backward: 5.0)
    q, k, v = bench.make_qkv(64, 16, 0.5, seed=0, heads=2)
    methods = {"ours": reference.entmax_attention, "adasplash": "skipped: not installed", "sdpa_flash": broken}
    rows = bench.bench_case(methods, q, k, v, 64, 16, "trained", (0.5, "reference"), n_sets=2, timing="graph")
    by_method = {row.method: row for row in rows}
    assert by_method["ours"].fwd_ms == 1.0 and by_method["ours"].peak_mib == 5.0
    assert by_method["adasplash"].note == "skipped: not installed" and by_method["adasplash"].fwd_ms is None
    assert by_method["sdpa_flash"].note == "RuntimeError: power-of-two N only"
    assert all(row.block_sparsity == 0.5 for row in rows)


def test_decode_mode_methods(bench, monkeypatch):
    """--decode: the last queries against every key, non-causal, forward only; ours/adasplash skip."""
    for name in ("ours", "adasplash"):
        with pytest.raises(bench.MethodUnavailable, match="as many queries as keys"):
            bench.build_method(name, decode=True)
    assert bench.parse_args(["--decode", "16", "--seqlens", "16", "64"]).decode == 16
    for bad in ("0", "17"):  # no queries (q[..., -0:] is all of them), more queries than keys
        with pytest.raises(SystemExit):
            bench.parse_args(["--decode", bad, "--seqlens", "16", "64"])
    q, k, v = bench.make_qkv(64, 16, 0.5, seed=1, heads=2)
    last = q[:, :, -3:]
    out = bench.build_method("sdpa_flash", decode=True)(last, k, v)
    expected = torch.softmax(last.double() @ k.double().transpose(-1, -2) / 4.0, dim=-1) @ v.double()
    assert (out.double() - expected).abs().max() < 1e-5  # all 64 keys, no causal mask

    # the block methods decode non-causally on their PyTorch path: with top_k (16) >= the 4 key
    # blocks, top-k selects every block and equals dense attention of the last queries to all keys
    q4, k4, v4 = bench.make_qkv(256, 16, 0.5, seed=1, heads=2)
    last4 = q4[:, :, -3:]
    dense = torch.softmax(last4.double() @ k4.double().transpose(-1, -2) / 4.0, dim=-1) @ v4.double()
    assert (bench.build_method("topk_blocks", decode=True)(last4, k4, v4).double() - dense).abs().max() < 1e-5
    hierarchical = bench.build_method("hierarchical", decode=True)(last4, k4, v4)
    assert hierarchical.shape == last4.shape and torch.isfinite(hierarchical).all()
    with pytest.raises(ValueError, match="Nq == Nk"):  # the training (causal) build cannot decode
        bench.build_method("topk_blocks")(last4, k4, v4)

    monkeypatch.setattr(bench, "time_ms", lambda attention, sets, backward, timing: 2.0 if backward else 1.0)
    monkeypatch.setattr(bench, "peak_mib", lambda attention, inputs, backward: 7.0 if backward else 3.0)
    rows = bench.bench_case({"flash": lambda *t: None}, last, k, v, 64, 16, "trained, decode 3q", (None, ""),
                            n_sets=1, backward=False)
    assert (rows[0].fwd_ms, rows[0].fwd_bwd_ms, rows[0].peak_mib) == (1.0, None, 3.0)


def test_from_json_joins_saved_runs(bench, tmp_path, capsys):
    def saved(name, n, fwd):
        row = bench.BenchRow("ours", n, 64, "trained", block_sparsity=0.5, fwd_ms=fwd, fwd_bwd_ms=2 * fwd)
        bench.write_json([row], tmp_path / name, {"device": "GPU X"})
        return str(tmp_path / name)

    files = [saved("a.json", 4096, 1.0), saved("b.json", 8192, 3.0)]
    rows = bench.main(["--from-json", *files, "--plot", str(tmp_path / "p.png")])
    assert [(r.n, r.fwd_ms, r.fwd_bwd_ms) for r in rows] == [(4096, 1.0, 2.0), (8192, 3.0, 6.0)]
    out = capsys.readouterr().out
    assert "measured on GPU X" in out and "| ours | 8192 | 64 | trained | 50.0% | 3.000 | 6.000 |" in out
    assert (tmp_path / "p.png").stat().st_size > 0


def test_host_timing_counts_the_calls_it_times(bench):
    """--timing host: one untimed call, then batches of calls timed on the CPU; each call backpropagates
    through torch.autograd.grad, so .grad stays untouched."""
    q, k, v = bench.make_qkv(32, 16, 0.5, seed=0, heads=2)
    sets = bench.input_sets_for(q, k, v, n_sets=2)
    calls = []

    def attention(q_, k_, v_):
        calls.append(q_.data_ptr())
        return reference.entmax_attention(q_, k_, v_)

    ms = bench.time_ms(attention, sets, backward=True, timing="host")
    assert math.isfinite(ms) and ms > 0
    assert len(calls) == 1 + 10 * 20 and len(set(calls)) == 2  # both input sets, in turn
    assert all(t.grad is None for inputs in sets for t in inputs[:3])
    assert bench.parse_args(["--timing", "host"]).timing == "host"


@pytest.mark.parametrize("estimate,rep,warmup", [(0.5, 100, 25), (30.0, 900.0, 90.0)])
def test_wall_timing_stretches_to_enough_calls(bench, monkeypatch, estimate, rep, warmup):
    """Wall-clock timing hands do_bench at least MIN_TIMED_CALLS calls' worth of time to time and
    MIN_WARMUP_CALLS to warm up (at 32k a call takes some 30 ms: 100 ms would time three), and
    leaves shorter calls at the usual 100 ms and 25 ms."""
    import triton.testing

    seen = {}

    def fake_do_bench(fn, warmup, rep, grad_to_none, return_mode):
        seen.update(warmup=warmup, rep=rep, leaves=len(grad_to_none))
        return 1.5

    monkeypatch.setattr(bench, "_estimate_ms", lambda run, leaves: estimate)
    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    q, k, v = bench.make_qkv(32, 16, 0.5, seed=0, heads=2)
    assert bench.time_ms(reference.entmax_attention, bench.input_sets_for(q, k, v, n_sets=2), backward=True) == 1.5
    assert seen == {"warmup": warmup, "rep": rep, "leaves": 6}
    assert (bench.MIN_TIMED_CALLS, bench.MIN_WARMUP_CALLS) == (30, 3)


class _WallClockEvent:
    """torch.cuda.Event's part that timed_stretch uses, on the CPU's clock."""

    synchronized = 0

    def record(self):
        self.at = time.perf_counter()

    def synchronize(self):
        _WallClockEvent.synchronized += 1

    def elapsed_time(self, end):
        return (end.at - self.at) * 1e3


def test_timed_stretch_times_each_replay_for_the_whole_stretch(bench):
    """Sustained timing: replays back to back for the stretch's wall time, each one timed, with at
    most `queued` of them waiting (the oldest is waited for beyond that)."""
    _WallClockEvent.synchronized = 0
    start = time.perf_counter()
    times = bench.timed_stretch(lambda: time.sleep(0.002), 0.1, queued=4, event=_WallClockEvent,
                                synchronize=lambda: None)
    elapsed = time.perf_counter() - start
    assert 0.1 <= elapsed < 0.1 + 0.05
    assert 10 <= len(times) <= 50 and all(t >= 2.0 for t in times)
    assert _WallClockEvent.synchronized == len(times) - 4


def test_settled_stretch_times_and_samples_only_the_second_half(bench):
    """The first half of a sustained stretch runs before the clock settles: it is neither timed
    nor sampled; the second half gives the median and the clock window."""
    events = []

    @contextlib.contextmanager
    def window():
        events.append(("open", time.perf_counter()))
        yield "clocks"
        events.append(("close", time.perf_counter()))

    durations = iter([0.004] * 20 + [0.001, 0.003, 0.002] * 100)
    start = time.perf_counter()
    ms, clocks = bench.settled_stretch(lambda: time.sleep(next(durations)), 0.16, window, queued=2,
                                       event=_WallClockEvent, synchronize=lambda: None)
    assert clocks == "clocks" and [kind for kind, _ in events] == ["open", "close"]
    # the window opens after the settling half and closes at the end of the timed one
    assert 0.08 <= events[0][1] - start < 0.08 + 0.04 and 0.16 <= events[1][1] - start < 0.16 + 0.05
    # the settling half's 4 ms replays are not in the median of the 1-3 ms ones after it
    assert 1.9 <= ms < 2.6


def test_sustained_timing_idles_before_each_timing_outside_its_clock_window(bench, monkeypatch):
    """Each method's sustained timing starts after SUSTAINED_PAUSE_S of idling, which its clock
    window (the row's SM clock and power) leaves out. The forward's window goes to fwd_sm_mhz and
    fwd_power_w, the forward+backward's to sm_mhz and power_w."""
    from scripts import gpu_clocks

    events = []

    class FakeSampler(gpu_clocks.ClockSampler):
        @contextlib.contextmanager
        def window(self):
            events.append(("window", time.perf_counter()))
            clocks = gpu_clocks.ClockWindow()
            clocks.samples = [(1000.0 + len(events), 100.0 + len(events))]
            yield clocks

    monkeypatch.setattr(bench, "ClockSampler", FakeSampler)
    monkeypatch.setattr(bench, "SUSTAINED_PAUSE_S", 0.05)
    monkeypatch.setattr(bench.time, "sleep", lambda s: events.append(("sleep", s)))

    def sustained_ms(attention, sets, backward, window):
        with window() as clocks:
            return (2.0 if backward else 1.0), clocks

    monkeypatch.setattr(bench, "sustained_ms", sustained_ms)
    monkeypatch.setattr(bench, "peak_mib", lambda attention, inputs, backward: 5.0)
    q, k, v = bench.make_qkv(64, 16, 0.5, seed=0, heads=2)
    rows = bench.bench_case({"a": lambda *t: None, "b": lambda *t: None}, q, k, v, 64, 16, "trained",
                            (0.5, "kernel"), n_sets=1, timing="sustained")
    assert [(r.fwd_ms, r.fwd_bwd_ms) for r in rows] == [(1.0, 2.0), (1.0, 2.0)]
    assert [kind for kind, _ in events] == ["sleep", "window"] * 4 and events[0][1] == 0.05
    assert [(r.fwd_sm_mhz, r.fwd_power_w, r.sm_mhz, r.power_w) for r in rows] == [
        (1002.0, 102.0, 1004.0, 104.0), (1006.0, 106.0, 1008.0, 108.0)]
    assert bench.parse_args(["--timing", "sustained"]).timing == "sustained"


def test_timing_option_is_recorded_and_not_mixed(bench, tmp_path, capsys):
    """--timing graph is recorded in the JSON; --from-json refuses files timed differently (files
    from before the option count as wall-clock)."""
    assert bench.parse_args([]).timing == "wall" and bench.parse_args(["--timing", "graph"]).timing == "graph"
    with pytest.raises(SystemExit):
        bench.parse_args(["--timing", "cpu"])
    with pytest.raises(ValueError, match="timing must be one of"):
        bench.time_ms(None, [], backward=False, timing="cpu")
    row = bench.BenchRow("ours", 4096, 64, "trained", fwd_ms=1.0)
    bench.write_json([row], tmp_path / "old.json", {"device": "GPU X"})
    bench.write_json([row], tmp_path / "wall.json", {"device": "GPU X", "timing": "wall"})
    bench.write_json([row], tmp_path / "graph.json", {"device": "GPU X", "timing": "graph"})
    bench.main(["--from-json", str(tmp_path / "old.json"), str(tmp_path / "wall.json")])
    assert "timing: wall" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="timed differently"):
        bench.main(["--from-json", str(tmp_path / "wall.json"), str(tmp_path / "graph.json")])


def test_environment_records_versions(bench):
    info = bench.environment()
    assert info["torch"] == torch.__version__
    assert info["device"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    # the adasplash baseline's version is recorded exactly when the package is installed
    assert ("adasplash" in info) == (importlib.util.find_spec("adasplash") is not None)
