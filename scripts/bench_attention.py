"""Attention benchmark: alpha-entmax kernels vs SDPA flash / cuDNN vs the `adasplash` package.

Times forward and forward+backward (median of triton.testing.do_bench) and peak memory, bf16,
causal, B=1, H=16, for every (N, D, input regime), with all methods in the same process on the
same card, and reports the measured block sparsity of each input (ARCHITECTURE.md section 5).
``--timing graph`` replays the calls from a CUDA graph instead, which removes the host's launch
cost: the GPU's own time, for the cases where the host is slower than the GPU; ``--timing host``
measures that host cost alone; ``--timing sustained`` replays each method's calls back to back
for seconds after a pause, the time under the clock its own load settles at (the board's power
cap; see `time_ms`).

    python -m scripts.bench_attention --seqlens 4096 8192 --head-dims 64 --json runs/bench.json
    python -m scripts.bench_attention --calibrate --target 0.6 --calib-n 8192 --calib-d 64

Inputs are RoPE-structured (docs/OFFLINE.md): q and k share one random direction per head plus
noise, are normalized to sqrt(D) * temperature and sqrt(D), then rotated by RoPE, so attention
decays with distance the way it does in trained models. The temperature sets the sparsity:
  trained  about 55-60% block sparsity at N = 8k (the level reported for trained models at 4-8k)
  long     about 70% at N = 32k (the level reported for trained models at 32k)
  sparse   90%+ at every N >= 4k
``--qk-file`` adds q/k/v captured from a trained checkpoint (a torch.save'd dict, see
`load_qkv_file`). Forward timings run without autograd; forward+backward timings backpropagate a
fixed random gradient. Our kernel is timed without return_stats (its stats need a host sync);
the stats come from one separate call.

``--decode M`` times the decode-style forward instead: the last M queries of each input against
all N keys, non-causal (what generation with a KV cache computes), forward only. Methods that need
as many queries as keys (ours, adasplash) are skipped there with a note.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

if __package__ in (None, ""):
    # Run as a file (python scripts/bench_attention.py): make the repository's kernels importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernels import reference  # noqa: E402
from kernels.entmax_attention import MAX_N_ITER  # noqa: E402
from scripts.gpu_clocks import ClockSampler  # noqa: E402

METHODS = ("sdpa_flash", "sdpa_cudnn", "adasplash", "ours", "hierarchical", "topk_blocks")
DEFAULT_SEQLENS = (4096, 8192, 16384, 32768)
DEFAULT_HEAD_DIMS = (64, 128)
DEFAULT_REGIMES = ("trained", "long", "sparse")
ROPE_BASE = 10000.0
NOISE = 0.5
BLOCK = 64

# Temperatures found on the CPU with `calibrate_temperature` (8 bisection steps in [0.05, 3])
# measuring the exact reference on 12 sampled row tiles (seed 0, B=1, H=16, block 64); each
# regime's anchor (target block sparsity, N) is in REGIME_TARGETS. Reached there:
# D=64: 57.9%, 69.9%, 92.0%; D=128: 57.4%, 69.9%, 92.1%. The kernel's measured value is
# printed with every benchmark row; re-run --calibrate on the GPU to check.
REGIME_TARGETS = {"trained": (0.575, 8192), "long": (0.70, 32768), "sparse": (0.92, 4096)}
REGIME_TEMPERATURES = {
    64: {"trained": 0.320, "long": 0.229, "sparse": 1.742},
    128: {"trained": 0.166, "long": 0.131, "sparse": 0.525},
}


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def rope_rotate(x: torch.Tensor, base: float = ROPE_BASE) -> torch.Tensor:
    """Rotary position embedding (half-split pairs) of x: (..., N, D), position = row index."""
    n, d = x.shape[-2:]
    if d % 2:
        raise ValueError(f"head dim must be even for RoPE, got {d}")
    half = d // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float64) / half)
    angle = torch.arange(n, dtype=torch.float64)[:, None] * inv_freq[None, :]
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def temperature_for(regime: str | float, d: int) -> float:
    """A regime name's calibrated temperature for head dim d, or a number used as is."""
    if isinstance(regime, (int, float)) and not isinstance(regime, bool):
        if regime <= 0:
            raise ValueError(f"temperature must be positive, got {regime}")
        return float(regime)
    if regime not in REGIME_TARGETS:
        raise ValueError(f"unknown regime {regime!r}; choose one of {sorted(REGIME_TARGETS)} or pass a temperature")
    if d not in REGIME_TEMPERATURES:
        raise ValueError(
            f"no calibrated temperatures for head dim {d} (have {sorted(REGIME_TEMPERATURES)}); "
            "run --calibrate and pass the temperature as the regime"
        )
    return REGIME_TEMPERATURES[d][regime]


def make_qk(
    n: int,
    d: int,
    regime: str | float = "trained",
    seed: int = 0,
    *,
    batch: int = 1,
    heads: int = 16,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE-structured q, k of shape (batch, heads, n, d), deterministic per seed.

    Per head, q and k are one shared random direction plus NOISE * standard normal noise,
    normalized to sqrt(d) * temperature (q) and sqrt(d) (k), then rotated by RoPE. Drawn on the CPU
    in float32 so a seed gives the same tensors on every device.
    """
    if n < 1 or d < 2:
        raise ValueError(f"need n >= 1 and d >= 2, got n={n}, d={d}")
    temp = temperature_for(regime, d)
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(batch, heads, 1, d, generator=gen)
    q = direction + NOISE * torch.randn(batch, heads, n, d, generator=gen)
    k = direction + NOISE * torch.randn(batch, heads, n, d, generator=gen)
    q = q * (math.sqrt(d) * temp / q.norm(dim=-1, keepdim=True))
    k = k * (math.sqrt(d) / k.norm(dim=-1, keepdim=True))
    return rope_rotate(q).to(device, dtype), rope_rotate(k).to(device, dtype)


def make_qkv(n, d, regime="trained", seed=0, **kwargs):
    """make_qk plus standard normal values from the same seed."""
    q, k = make_qk(n, d, regime, seed, **kwargs)
    gen = torch.Generator().manual_seed(seed + 7919)
    v = torch.randn(k.shape, generator=gen).to(k.device, k.dtype)
    return q, k, v


def load_qkv_file(path: str | Path) -> dict[str, torch.Tensor]:
    """q, k, v captured from a checkpoint: a torch.save'd dict with "q", "k" and optionally "v".

    Tensors are (B, H, N, D) (or (H, N, D), read as B = 1) and hold the inputs of the attention
    kernel, after RoPE and before the 1/sqrt(D) scale. Missing v is drawn standard normal.
    """
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or "q" not in data or "k" not in data:
        raise ValueError(f"--qk-file {path}: expected a dict with tensors 'q' and 'k' (and optionally 'v')")
    tensors = {}
    for name in ("q", "k", "v"):
        if name not in data:
            continue
        t = data[name]
        if t.dim() == 3:
            t = t.unsqueeze(0)
        if t.dim() != 4:
            raise ValueError(f"--qk-file {path}: {name} must be (B, H, N, D) or (H, N, D), got {tuple(t.shape)}")
        tensors[name] = t.float()
    if "v" not in tensors:
        tensors["v"] = torch.randn(tensors["k"].shape, generator=torch.Generator().manual_seed(0))
    if tensors["q"].shape[2] != tensors["k"].shape[2] or tensors["q"].shape[-1] != tensors["k"].shape[-1]:
        raise ValueError(f"--qk-file {path}: q and k must share N and D, got {tuple(tensors['q'].shape)}, {tuple(tensors['k'].shape)}")
    return tensors


# ----------------------------------------------------------------------------------------------
# methods
# ----------------------------------------------------------------------------------------------


class MethodUnavailable(RuntimeError):
    """A method cannot run here (missing package or backend); the message says why."""


def _sdpa(backend_name: str, causal: bool = True):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention

    backend = getattr(SDPBackend, backend_name)

    def attention(q, k, v):
        with sdpa_kernel(backend):
            return scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=k.shape[1] != q.shape[1])

    return attention


def _adasplash():
    try:
        import adasplash
    except ImportError as err:
        raise MethodUnavailable(f"adasplash not installed ({err}); pip install adasplash==0.2.2") from err
    version = getattr(adasplash, "__version__", "?")

    def attention(q, k, v):
        # Causal alpha = 1.5 routes to AdaSplash-2; it needs power-of-two N and applies 1/sqrt(D).
        return adasplash.adasplash(q, k, v, alpha=1.5, is_causal=True)

    attention.version = version
    return attention


def _ours(n_iter: int | None = None):
    """Our kernel at alpha = 1.5; n_iter None is the library default (the "ours" row), an int gives
    the "ours_n<K>" rows of --ours-n-iter. Each K is its own compiled kernel, so differences between
    rows bound what fewer passes would save; the cost of one pass is read from a profile
    (scripts/ncu_phases.py)."""
    try:
        import kernels
        kernel = functools.partial(kernels.entmax_attention, alpha=1.5, causal=True, n_iter=n_iter)
    except (ImportError, AttributeError) as err:
        raise MethodUnavailable(f"kernels.entmax_attention unavailable ({err})") from err

    def attention(q, k, v):
        return kernel(q, k, v)

    attention.with_stats = lambda q, k, v: kernel(q, k, v, return_stats=True)
    return attention


def _block_selection(name: str, top_k: int = 16, causal: bool = True):
    """hierarchical (alpha-entmax picks key blocks) or topk_blocks (top_k blocks per query), blocks of
    BLOCK keys; `selection_stats(q, k, v)` gives the fraction of key blocks they select."""
    try:
        from kernels import hierarchical
    except ImportError as err:
        raise MethodUnavailable(f"kernels.hierarchical unavailable ({err})") from err
    # The Triton token level needs Nq == Nk; decoding (causal=False, fewer queries) runs the PyTorch path.
    backend = "triton" if causal else "torch"
    if name == "hierarchical":
        kernel = functools.partial(hierarchical.hierarchical_attention, alpha=1.5, block_size=BLOCK, causal=causal,
                                   backend=backend)
    else:
        kernel = functools.partial(hierarchical.topk_block_attention, top_k=top_k, block_size=BLOCK, causal=causal,
                                   backend=backend)

    def attention(q, k, v):
        return kernel(q, k, v)

    attention.selection_stats = lambda q, k, v: kernel(q, k, v, return_stats=True)[1]
    return attention


def _selection_note(attention, q, k, v) -> str:
    """'selected X% of key blocks' for the block-selection methods; empty for the others."""
    if not hasattr(attention, "selection_stats"):
        return ""
    with torch.no_grad():
        stats = attention.selection_stats(q, k, v)
    return (f"selected {100 * stats['selected_block_fraction']:.1f}% of key blocks "
            f"({stats['blocks_per_query']:.1f} per query)")


def build_method(name: str, decode: bool = False):
    """The callable attention(q, k, v) -> out of one method; MethodUnavailable if it can't run.
    decode: non-causal attention of fewer queries than keys (the queries are the last positions)."""
    if decode and name in ("adasplash", "ours"):
        raise MethodUnavailable("needs as many queries as keys (a decode step uses the exact reference)")
    if name == "sdpa_flash":
        return _sdpa("FLASH_ATTENTION", causal=not decode)
    if name == "sdpa_cudnn":
        return _sdpa("CUDNN_ATTENTION", causal=not decode)
    if name == "adasplash":
        return _adasplash()
    if name == "ours":
        return _ours()
    if name in ("hierarchical", "topk_blocks"):
        return _block_selection(name, causal=not decode)
    raise ValueError(f"unknown method {name!r}; choose from {METHODS}")


# ----------------------------------------------------------------------------------------------
# measurement
# ----------------------------------------------------------------------------------------------


@dataclass
class BenchRow:
    method: str
    n: int
    d: int
    regime: str
    block_sparsity: float | None = None
    sparsity_source: str = ""
    fwd_ms: float | None = None
    fwd_bwd_ms: float | None = None
    peak_mib: float | None = None
    note: str = ""
    ratios: dict = field(default_factory=dict)
    # Mean SM clock (MHz) and power (W) while the row's headline time was measured (fwd+bwd, or
    # the forward without a backward), sampled by nvidia-smi (scripts/gpu_clocks.py); None without.
    sm_mhz: float | None = None
    power_w: float | None = None
    # The same for the forward's time when a backward follows (JSON only): with the two, energy per
    # call splits into forward and backward (power x time; docs/kernels.md, What remains, Power).
    fwd_sm_mhz: float | None = None
    fwd_power_w: float | None = None


def measure_block_sparsity(q, k, ours=None, n_row_tiles: int = 16) -> tuple[float, str]:
    """Block sparsity of causal alpha=1.5 attention on (q, k): our kernel's stats when it runs,
    otherwise the exact reference on n_row_tiles sampled query tiles."""
    if ours is not None:
        try:
            with torch.no_grad():
                _, stats = ours.with_stats(q, k, k)  # values do not change which tiles are zero
            return float(stats["block_sparsity"]), "kernel"
        except Exception as err:  # noqa: BLE001 - fall back to the reference, and say so
            print(f"  (our kernel's stats failed: {err!r}; using the reference)", file=sys.stderr)
    value = reference.sampled_block_sparsity(q, k, causal=True, n_row_tiles=n_row_tiles, block_m=BLOCK, block_n=BLOCK)
    return value, f"reference ({n_row_tiles} row tiles)"


TIMINGS = ("wall", "graph", "host", "sustained")
# Sustained timing: each method first idles SUSTAINED_PAUSE_S (bench_case), so that every one starts
# from the same cool card whatever ran before it, then replays its calls back to back for
# SUSTAINED_S. On the H200 both adasplash and ours reach the power cap within 0.1-0.2 s of load, and
# at the cap ours runs about 7 % below adasplash's clock (docs/benchmarks.md section 1q).
SUSTAINED_PAUSE_S = 2.0
SUSTAINED_S = 3.0
# GPU cycles a sleep kernel keeps the GPU busy while host timing issues its calls (some 35 ms at
# 2 GHz, beyond what 20 calls take to issue), so that no call waits for the GPU.
_HOST_SLEEP_CYCLES = 2**26


def _cycle(attention, input_sets, backward, accumulate: bool = True):
    """A closure that runs one call per invocation, rotating through the input sets. With
    accumulate=False the backward returns its gradients (torch.autograd.grad) instead of writing
    them to .grad, so consecutive calls need no .grad reset between them (graph and host timing)."""
    state = {"i": 0}

    def run():
        q, k, v, grad = input_sets[state["i"] % len(input_sets)]
        state["i"] += 1
        if backward and accumulate:
            attention(q, k, v).backward(grad)
        elif backward:
            torch.autograd.grad(attention(q, k, v), (q, k, v), grad)
        else:
            with torch.no_grad():
                attention(q, k, v)

    return run


# Wall-clock timing times at least this many calls, after at least this many warm-up calls (time_ms).
MIN_TIMED_CALLS = 30
MIN_WARMUP_CALLS = 3


def time_ms(attention, input_sets, backward: bool, warmup: int = 25, rep: int = 100, timing: str = "wall") -> float:
    """Median milliseconds of one call (CUDA).

    timing "wall": triton.testing.do_bench over at least MIN_TIMED_CALLS calls launched from Python
    one after another, with the L2 flushed before each: the time a caller waits, which is the host's
    launch cost (Python, allocations, autograd) wherever that exceeds the GPU's work. "graph":
    do_bench_cudagraph, the calls replayed from a CUDA graph, so the host drops out and the GPU's
    time remains (docs/benchmarks.md §1f measured both). "host": the host's cost alone (`host_ms`).
    "sustained": `sustained_ms`, graph replays back to back for SUSTAINED_S, the second half timed
    (the caller idles first).
    """
    from triton.testing import do_bench, do_bench_cudagraph

    if timing not in TIMINGS:
        raise ValueError(f"timing must be one of {TIMINGS}, got {timing!r}")
    if timing == "host":
        return host_ms(attention, input_sets, backward)
    if timing == "sustained":
        return sustained_ms(attention, input_sets, backward)[0]
    if timing == "graph":
        # Capture needs a stream other than the default one.
        with torch.cuda.stream(torch.cuda.Stream()):
            return float(do_bench_cudagraph(_cycle(attention, input_sets, backward, accumulate=False), rep=rep,
                                            return_mode="median"))
    leaves = [t for inputs in input_sets for t in inputs[:3]] if backward else []
    run = _cycle(attention, input_sets, backward)
    # do_bench times as many calls as fit in `rep` ms after `warmup` ms of them: at 32k, where one
    # call takes 25-35 ms, 100 ms is three or four calls, too few for a median (one 32k row read 8 %
    # above the same call's median over more calls, docs/benchmarks.md section 1p). So both stretch
    # to fit at least MIN_TIMED_CALLS and MIN_WARMUP_CALLS calls.
    estimate = _estimate_ms(run, leaves)
    rep = max(rep, MIN_TIMED_CALLS * estimate)
    warmup = max(warmup, MIN_WARMUP_CALLS * estimate)
    return float(do_bench(run, warmup=warmup, rep=rep, grad_to_none=leaves or None, return_mode="median"))


def _estimate_ms(run, leaves, calls: int = 3) -> float:
    """Milliseconds of one call of `run` (CUDA events, after one call outside the timing)."""
    run()
    for t in leaves:
        t.grad = None
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        run()
        for t in leaves:
            t.grad = None
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


def sustained_ms(attention, input_sets, backward: bool, seconds: float = SUSTAINED_S, window=None):
    """(median milliseconds of one call, the clock window of the timed calls): calls replayed back
    to back from a CUDA graph (one call per input set) for `seconds`, of which the second half is
    timed (`settled_stretch`): the time at the clock the card settles at under this method's own
    load. `window` is a ClockSampler's; without one the window holds no samples. Gradients are
    returned, not accumulated, as in "graph" timing."""
    run = _cycle(attention, input_sets, backward, accumulate=False)
    with torch.cuda.stream(torch.cuda.Stream()):  # capture needs a stream other than the default one
        run()  # compiling, autotuning and the allocator's first blocks stay out of the graph and the window
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in input_sets:
                run()
        ms, clocks = settled_stretch(graph.replay, seconds, window or ClockSampler().window)
    return ms / len(input_sets), clocks


def settled_stretch(replay, seconds: float, window, **stretch_options):
    """(median milliseconds of one replay, its ClockWindow): replays back to back for `seconds`;
    the first half lets the clock settle and is discarded, the second is timed and its clock and
    power sampled in `window` (a ClockSampler's). Between the halves the GPU idles only while the
    host issues the next replay. `stretch_options` go to timed_stretch (tests)."""
    timed_stretch(replay, seconds / 2, **stretch_options)
    with window() as clocks:
        replay_ms = timed_stretch(replay, seconds / 2, **stretch_options)
    return statistics.median(replay_ms), clocks


def timed_stretch(replay, seconds: float, queued: int = 8, event=None, synchronize=None) -> list[float]:
    """Milliseconds of each replay() (CUDA events around it), replayed back to back for `seconds` of
    wall time. At most `queued` replays wait in the stream, so that the stretch's wall time is the
    GPU's. `event` and `synchronize` replace torch.cuda's (tests)."""
    event = event or functools.partial(torch.cuda.Event, enable_timing=True)
    synchronize = synchronize or torch.cuda.synchronize
    pairs = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        begin, end = event(), event()
        begin.record()
        replay()
        end.record()
        pairs.append((begin, end))
        if len(pairs) > queued:
            pairs[-1 - queued][1].synchronize()
    synchronize()
    return [begin.elapsed_time(end) for begin, end in pairs]


def host_ms(attention, input_sets, backward: bool, calls: int = 20, repeats: int = 10) -> float:
    """Least, over `repeats` batches of `calls` calls, of the CPU milliseconds one call takes to
    issue while a sleep kernel keeps the GPU busy: no call waits for the GPU, so this is the host's
    cost (Python, allocations, autograd, kernel launches), which the wall-clock time shows wherever
    it exceeds the GPU's. Gradients are returned, not accumulated, as in "graph" timing.

    The least batch, not the median: on the H200 machine the batches of one process came out
    bimodal (0.14 or 0.27 ms for the same forward, docs/benchmarks.md §1g); whatever slows a batch
    down (other processes, clocks) is not the call's own cost, and it only ever adds time."""
    run = _cycle(attention, input_sets, backward, accumulate=False)
    run()  # compilation and autotuning stay out of the measurement
    per_call = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda._sleep(_HOST_SLEEP_CYCLES)
        start = time.perf_counter()
        for _ in range(calls):
            run()
        per_call.append((time.perf_counter() - start) / calls * 1e3)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return min(per_call)


def peak_mib(attention, inputs, backward: bool) -> float:
    """Extra CUDA memory one call allocates at its peak, beyond what was allocated before it."""
    torch.cuda.synchronize()
    for t in inputs[:3]:
        t.grad = None
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    _cycle(attention, [inputs], backward)()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def input_sets_for(q, k, v, n_sets: int, max_set_bytes: int = 256 * 2**20):
    """n_sets leaf copies of (q, k, v) plus an output gradient, on q's device.

    Copies have the same values (hence the same sparsity) at different addresses, so consecutive
    calls cannot hit inputs left in L2 by the previous call. Large inputs get one set: they do not
    fit in L2 anyway, and extra copies would only cost memory.
    """
    set_bytes = 4 * q.numel() * q.element_size()
    n_sets = 1 if set_bytes > max_set_bytes else n_sets
    sets = []
    for i in range(n_sets):
        gen = torch.Generator().manual_seed(1000 + i)
        grad = torch.randn(q.shape, generator=gen).to(q.device, q.dtype)
        sets.append(tuple(t.detach().clone().requires_grad_() for t in (q, k, v)) + (grad,))
    return sets


def bench_case(methods: dict, q, k, v, n: int, d: int, regime: str, sparsity, n_sets: int = 3,
               backward: bool = True, timing: str = "wall") -> list[BenchRow]:
    """All methods on one input (CUDA tensors); failures become rows with a note. backward=False
    times the forward alone (fwd+bwd and peak memory stay empty); timing as in time_ms. Each row
    gets the SM clock and power of its headline time (fwd+bwd, else fwd) from one sampler for the
    case (scripts/gpu_clocks.py)."""
    input_sets = input_sets_for(q, k, v, n_sets)
    with ClockSampler() as sampler:
        rows = []
        for name, attention in methods.items():
            row = BenchRow(name, n, d, regime, block_sparsity=sparsity[0], sparsity_source=sparsity[1])
            rows.append(_measure_row(row, attention, input_sets, (q, k, v), backward, timing, sampler))
        return rows


def _measure_row(row: BenchRow, attention, input_sets, qkv, backward: bool, timing: str, sampler) -> BenchRow:
    """Fill bench_case's row for one method (`attention` a callable, or the note of why it cannot run)."""
    if isinstance(attention, str):
        row.note = attention
        return row
    try:
        row.fwd_ms, clocks = _timed(attention, input_sets, False, timing, sampler)
        if backward:
            row.fwd_sm_mhz, row.fwd_power_w = clocks.sm_mhz, clocks.power_w
            row.fwd_bwd_ms, clocks = _timed(attention, input_sets, True, timing, sampler)
        row.sm_mhz, row.power_w = clocks.sm_mhz, clocks.power_w
        row.peak_mib = peak_mib(attention, input_sets[0], backward=backward)
        row.note = _selection_note(attention, *qkv)
    except torch.cuda.OutOfMemoryError:
        row.note = "out of memory"
    except Exception as err:  # noqa: BLE001 - one failing method must not end the sweep
        first_line = (str(err).splitlines() or [""])[0]
        row.note = f"{type(err).__name__}: {first_line[:120]}"
    finally:
        for inputs in input_sets:
            for t in inputs[:3]:
                t.grad = None
        torch.cuda.empty_cache()
    return row


def _timed(attention, input_sets, backward: bool, timing: str, sampler):
    """time_ms, and the clock window of its timed calls. Sustained timing idles SUSTAINED_PAUSE_S
    first, so that no method inherits the clock another one's load left, and its window spans only
    the timed half of its stretch (sustained_ms): a method's first call (where adasplash autotunes,
    seconds at low power) and the settling half would otherwise dilute the row's clock and power."""
    if timing == "sustained":
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        time.sleep(SUSTAINED_PAUSE_S)
        return sustained_ms(attention, input_sets, backward, window=sampler.window)
    with sampler.window() as clocks:
        ms = time_ms(attention, input_sets, backward=backward, timing=timing)
    return ms, clocks


def add_ratios(rows: list[BenchRow], baselines=("sdpa_flash", "sdpa_cudnn", "adasplash")) -> None:
    """row.ratios["fwd/<base>"], ["fwd_bwd/<base>"], ["peak/<base>"]: time (peak memory) divided by
    the baseline's on the same case."""
    by_case = {}
    for row in rows:
        by_case.setdefault((row.n, row.d, row.regime), {})[row.method] = row
    for row in rows:
        case = by_case[(row.n, row.d, row.regime)]
        for base in baselines:
            ref_row = case.get(base)
            for key, attr in (("fwd", "fwd_ms"), ("fwd_bwd", "fwd_bwd_ms"), ("peak", "peak_mib")):
                mine = getattr(row, attr)
                theirs = getattr(ref_row, attr) if ref_row is not None else None
                if mine is not None and theirs:
                    row.ratios[f"{key}/{base}"] = mine / theirs


# ----------------------------------------------------------------------------------------------
# reporting
# ----------------------------------------------------------------------------------------------


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[BenchRow]) -> str:
    """Markdown table, one row per (case, method); ratios are time / baseline time (lower is faster)."""
    header = (
        "| method | N | D | regime | block sparsity | fwd ms | fwd+bwd ms | peak MiB "
        "| fwd x flash | f+b x flash | f+b x cuDNN | fwd x adasplash | f+b x adasplash | peak x flash | SM MHz, W "
        "| note |"
    )
    n_columns = header.count("|") - 1
    lines = [header, "|" + "---|" * n_columns]
    for r in rows:
        sparsity = "-" if r.block_sparsity is None else f"{100 * r.block_sparsity:.1f}%"
        cells = [
            r.method, str(r.n), str(r.d), r.regime, sparsity,
            _fmt(r.fwd_ms, ".3f"), _fmt(r.fwd_bwd_ms, ".3f"), _fmt(r.peak_mib, ".0f"),
            _fmt(r.ratios.get("fwd/sdpa_flash"), ".2f"), _fmt(r.ratios.get("fwd_bwd/sdpa_flash"), ".2f"),
            _fmt(r.ratios.get("fwd_bwd/sdpa_cudnn"), ".2f"),
            _fmt(r.ratios.get("fwd/adasplash"), ".2f"), _fmt(r.ratios.get("fwd_bwd/adasplash"), ".2f"),
            _fmt(r.ratios.get("peak/sdpa_flash"), ".2f"),
            "-" if r.sm_mhz is None else f"{r.sm_mhz:.0f}, {_fmt(r.power_w, '.0f')}", r.note,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment() -> dict:
    info = {"torch": torch.__version__, "device": "cpu"}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    try:  # the baseline's version belongs with its numbers (absent where it is not installed)
        info["adasplash"] = importlib.metadata.version("adasplash")
    except importlib.metadata.PackageNotFoundError:
        pass
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    return info


def write_json(rows: list[BenchRow], path: str | Path, meta: dict) -> None:
    save_json({"meta": meta, "rows": [asdict(r) for r in rows]}, path, indent=2)


def save_json(data: dict, path: str | Path, indent: int = 1) -> None:
    """Write through a temporary file and a rename, so that a process killed while writing (a
    time limit cutting a run that saves after every case) leaves the previous version whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=indent))
    partial.replace(path)


def read_json(paths) -> tuple[list[BenchRow], list[dict]]:
    """Rows and environments of earlier --json files (one GPU call per case fits the time limits
    better; this joins them into one table and plot)."""
    rows, metas = [], []
    for path in paths:
        data = json.loads(Path(path).read_text())
        metas.append(data.get("meta", {}))
        rows += [BenchRow(**row) for row in data["rows"]]
    return rows, metas


def plot_rows(rows: list[BenchRow], path: str | Path, title: str = "") -> None:
    """Time vs N per method: one row of panels (fwd, fwd+bwd) per (D, regime), log-log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(r.d, r.regime) for r in rows})
    if not cases:
        raise ValueError("nothing to plot: no benchmark rows")
    fig, axes = plt.subplots(len(cases), 2, figsize=(11, 3.6 * len(cases)), squeeze=False)
    for (d, regime), panel_row in zip(cases, axes):
        for ax, attr, label in ((panel_row[0], "fwd_ms", "forward"), (panel_row[1], "fwd_bwd_ms", "forward+backward")):
            for method in sorted({r.method for r in rows}):
                points = sorted(
                    (r.n, getattr(r, attr))
                    for r in rows
                    if (r.d, r.regime, r.method) == (d, regime, method) and getattr(r, attr) is not None
                )
                if points:
                    ax.plot(*zip(*points), marker="o", label=method)
            ax.set(xscale="log", yscale="log", xlabel="N", ylabel="ms (median)", title=f"{label}, D={d}, {regime}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# calibration
# ----------------------------------------------------------------------------------------------


def calibrate_temperature(measure, target: float, lo: float = 0.02, hi: float = 4.0, iters: int = 12):
    """Bisection on the temperature so that measure(temp) (block sparsity, increasing in temp)
    reaches target; returns (temperature, measured sparsity there)."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"target block sparsity must lie in (0, 1), got {target}")
    s_lo, s_hi = measure(lo), measure(hi)
    if not s_lo <= target <= s_hi:
        raise ValueError(
            f"target {target} is outside [{s_lo:.3f}, {s_hi:.3f}] reached by temperatures [{lo}, {hi}]; widen them"
        )
    for _ in range(iters):
        # Geometric midpoint: sparsity moves with the log of the temperature.
        mid = math.sqrt(lo * hi)
        s_mid = measure(mid)
        if s_mid < target:
            lo, s_lo = mid, s_mid
        else:
            hi, s_hi = mid, s_mid
    return (lo, s_lo) if abs(s_lo - target) <= abs(s_hi - target) else (hi, s_hi)


def sparsity_measure(n: int, d: int, seed: int, device, ours=None, n_row_tiles: int = 16, heads: int = 16):
    """measure(temp) -> block sparsity of make_qk(n, d, temp, seed) (bf16 on CUDA, else float32)."""
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32

    def measure(temp: float) -> float:
        q, k = make_qk(n, d, temp, seed, heads=heads, dtype=dtype, device=device)
        return measure_block_sparsity(q, k, ours=ours, n_row_tiles=n_row_tiles)[0]

    return measure


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seqlens", type=int, nargs="+", default=list(DEFAULT_SEQLENS))
    p.add_argument("--head-dims", type=int, nargs="+", default=list(DEFAULT_HEAD_DIMS))
    p.add_argument("--regimes", nargs="+", default=list(DEFAULT_REGIMES),
                   help="regime names (trained, long, sparse) or temperatures")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--ours-n-iter", type=int, nargs="+", default=[], metavar="K",
                   help="also time our kernel with K refinement passes (rows ours_n<K>); each K compiles "
                        "its own kernel, so per-pass costs come from a profile (scripts/ncu_phases.py)")
    p.add_argument("--timing", choices=TIMINGS, default="wall",
                   help="wall: calls launched one after another (do_bench), host cost included; graph: "
                        "replayed from a CUDA graph (do_bench_cudagraph), the GPU's time alone; host: the "
                        "CPU time to issue a call, the host's cost alone; sustained: graph replays back to "
                        f"back for {SUSTAINED_S:g} s after {SUSTAINED_PAUSE_S:g} s idle, the median of the second "
                        "half (the time under the power cap the method's own load sets)")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-sets", type=int, default=3, help="input sets rotated between calls (small N only)")
    p.add_argument("--qk-file", action="append", default=[], help="torch.save'd dict of q, k[, v] (repeatable)")
    p.add_argument("--decode", type=int, metavar="M",
                   help="decode-style forward: the last M queries against all N keys, non-causal, no backward")
    p.add_argument("--from-json", nargs="+", metavar="FILE",
                   help="no measuring: print the table (and --plot) of rows saved by earlier --json runs")
    p.add_argument("--json", help="write rows and environment to this JSON file")
    p.add_argument("--plot", help="write a time-vs-N plot (PNG) to this path")
    p.add_argument("--calibrate", action="store_true", help="search the temperature for --target and exit")
    p.add_argument("--target", type=float, default=0.6, help="block sparsity to calibrate for")
    p.add_argument("--calib-n", type=int, default=8192)
    p.add_argument("--calib-d", type=int, default=64)
    p.add_argument("--temp-range", type=float, nargs=2, default=[0.02, 4.0], metavar=("LO", "HI"),
                   help="temperatures bracketing the calibration target")
    p.add_argument("--row-tiles", type=int, default=16, help="query tiles sampled by the reference sparsity")
    args = p.parse_args(argv)
    args.regimes = [_regime_arg(r) for r in args.regimes]
    for n in args.seqlens:
        if n < 1:
            p.error(f"--seqlens must be positive, got {n}")
    # q[..., -M:, :] with M = 0 would be every query, and M > N would be N queries, both under a "decode Mq" label
    if args.decode is not None and not 1 <= args.decode <= min(args.seqlens):
        p.error(f"--decode must be between 1 and the shortest --seqlens ({min(args.seqlens)}), got {args.decode}")
    for n_iter in args.ours_n_iter:
        if not 0 <= n_iter <= MAX_N_ITER:
            p.error(f"--ours-n-iter takes refinement passes between 0 and {MAX_N_ITER}, got {n_iter}")
    if args.ours_n_iter and args.decode is not None:
        p.error("--ours-n-iter times our kernel, which needs as many queries as keys: drop --decode")
    return args


def _regime_arg(text: str):
    try:
        return float(text)
    except ValueError:
        if text not in REGIME_TARGETS:
            raise SystemExit(f"--regimes: unknown regime {text!r}; use {sorted(REGIME_TARGETS)} or a temperature")
        return text


def _available_methods(names, decode: bool = False) -> dict:
    """name -> callable, or name -> note string when it cannot run."""
    methods = {}
    for name in names:
        try:
            methods[name] = build_method(name, decode=decode)
        except MethodUnavailable as err:
            methods[name] = f"skipped: {err}"
            print(f"note: {name} skipped: {err}", file=sys.stderr)
    return methods


def _cases(args):
    """(label, n, d, q, k, v) on the CPU in float32, generated lazily (one case in memory at once)."""
    for d in args.head_dims:
        for regime in args.regimes:
            label = regime if isinstance(regime, str) else f"temp={regime:g}"
            for n in args.seqlens:
                q, k, v = make_qkv(n, d, regime, args.seed, batch=args.batch, heads=args.heads)
                yield label, n, d, q, k, v
    for path in args.qk_file:
        tensors = load_qkv_file(path)
        full_n = tensors["q"].shape[2]
        for n in sorted({full_n, *[n for n in args.seqlens if n < full_n]}):
            q, k, v = (tensors[name][:, :, :n] for name in ("q", "k", "v"))
            yield f"file:{Path(path).stem}", n, q.shape[-1], q, k, v


def run_calibration(args, ours) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    measure = sparsity_measure(
        args.calib_n, args.calib_d, args.seed, device, ours=ours, n_row_tiles=args.row_tiles, heads=args.heads
    )
    temp, reached = calibrate_temperature(measure, args.target, lo=args.temp_range[0], hi=args.temp_range[1])
    print(f"N={args.calib_n} D={args.calib_d} target {args.target:.3f}: temperature {temp:.4f} "
          f"gives block sparsity {reached:.3f} (device {environment()['device']})")


def main(argv=None) -> list[BenchRow]:
    args = parse_args(argv)
    if args.from_json:
        rows, metas = read_json(args.from_json)
        devices = sorted({m.get("device", "?") for m in metas})
        # Files written before --timing existed were all wall-clock.
        timings = sorted({m.get("timing", "wall") for m in metas})
        if len(timings) > 1:
            raise SystemExit(f"--from-json: the files were timed differently ({', '.join(timings)}): their "
                             f"milliseconds do not compare; tabulate each timing separately")
        print(f"# {len(rows)} rows from {len(args.from_json)} file(s), measured on {', '.join(devices)}, "
              f"timing: {timings[0]}")
        print(format_table(rows))
        if args.plot:
            plot_rows(rows, args.plot, title=", ".join(devices))
        return rows
    if args.calibrate:
        # On the CPU the reference measures; the Triton kernel's stats are used only under CUDA.
        ours = _available_methods(["ours"])["ours"] if torch.cuda.is_available() else None
        run_calibration(args, None if isinstance(ours, str) else ours)
        return []
    if not torch.cuda.is_available():
        raise SystemExit("bench_attention times CUDA kernels and needs a GPU (--calibrate works on the CPU)")
    decode = args.decode is not None
    methods = _available_methods(args.methods, decode=decode)
    ours = None if isinstance(methods.get("ours"), str) else methods.get("ours")
    for n_iter in args.ours_n_iter:
        methods[f"ours_n{n_iter}"] = _ours(n_iter) if ours is not None else "skipped: ours is unavailable"

    meta = environment() | {"dtype": "bfloat16", "causal": not decode, "batch": args.batch, "heads": args.heads,
                            "decode_queries": args.decode, "timing": args.timing}
    print(f"# attention benchmark on {meta['device']} (torch {meta['torch']}, triton {meta.get('triton')}), "
          f"timing: {args.timing}")
    rows = measure_cases(args, methods, ours, meta)
    print(format_table(rows))
    if args.plot:
        plot_rows(rows, args.plot, title=meta["device"])
    return rows


def measure_cases(args, methods: dict, ours, meta: dict, device: str = "cuda") -> list[BenchRow]:
    """Every case's rows with their ratios. With --json the file is rewritten after each case
    (meta "complete": false until the last), so a run cut short by a time limit keeps the
    cases it finished."""
    decode = args.decode is not None
    rows = []
    for label, n, d, q, k, v in _cases(args):
        q, k, v = (t.to(device, torch.bfloat16).contiguous() for t in (q, k, v))
        if decode:
            # the last queries against every key; causal block sparsity does not apply
            q, sparsity, label = q[:, :, -args.decode:].contiguous(), (None, ""), f"{label}, decode {args.decode}q"
        else:
            sparsity = measure_block_sparsity(q, k, ours=ours, n_row_tiles=args.row_tiles)
        case_rows = bench_case(methods, q, k, v, n, d, label, sparsity, n_sets=args.input_sets, backward=not decode,
                               timing=args.timing)
        for row in case_rows:
            print(f"  {row.method:>10} N={n} D={d} {label}: fwd {_fmt(row.fwd_ms, '.3f')} ms, "
                  f"fwd+bwd {_fmt(row.fwd_bwd_ms, '.3f')} ms {row.note}", flush=True)
        rows.extend(case_rows)
        del q, k, v
        if device == "cuda":
            torch.cuda.empty_cache()
        if args.json:
            add_ratios(rows)
            write_json(rows, args.json, meta | {"complete": False})
    add_ratios(rows)
    if args.json:
        write_json(rows, args.json, meta | {"complete": True})
    return rows


if __name__ == "__main__":
    main()
