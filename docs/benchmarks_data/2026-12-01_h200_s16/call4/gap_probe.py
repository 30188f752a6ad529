"""Where does ours' wall-clock time at 32k D128 long exceed its kernels' sum? Timeline of GPU idle gaps and the
CUDA runtime calls of a do_bench-style fwd+bwd loop (accumulate into .grad, grad_to_none, L2 flush)."""
import sys, time, json
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
sys.path.insert(0, ".")
from scripts import bench_attention as b

n, d = int(sys.argv[1]), int(sys.argv[2])
method = sys.argv[3] if len(sys.argv) > 3 else "ours"
q, k, v = b.make_qkv(n, d, b._regime_arg("long"), dtype=torch.bfloat16, device="cuda")
attn = b.build_method(method)
sets = b.input_sets_for(q, k, v, 1)
leaves = [t for s in sets for t in s[:3]]
flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")

def step(accumulate=True, do_flush=True):
    for t in leaves:
        t.grad = None
    if do_flush:
        flush.zero_()
    q_, k_, v_, g = sets[0]
    if accumulate:
        attn(q_, k_, v_).backward(g)
    else:
        torch.autograd.grad(attn(q_, k_, v_), (q_, k_, v_), g)

for _ in range(3):
    step()
torch.cuda.synchronize()
for label, kw in [("wall-like", {}), ("no flush", dict(do_flush=False)), ("autograd.grad", dict(accumulate=False))]:
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for t in leaves: t.grad = None
        if kw.get("do_flush", True): flush.zero_()
        s.record(); 
        q_, k_, v_, g = sets[0]
        if kw.get("accumulate", True): attn(q_, k_, v_).backward(g)
        else: torch.autograd.grad(attn(q_, k_, v_), (q_, k_, v_), g)
        e.record(); torch.cuda.synchronize(); times.append(s.elapsed_time(e))
    print(f"{label}: {sorted(times)}")
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(2):
        step()
    torch.cuda.synchronize()
prof.export_chrome_trace(sys.argv[4] if len(sys.argv) > 4 else "/tmp/trace.json")
events = prof.events()
gpu = sorted([e for e in events if e.device_type == DeviceType.CUDA], key=lambda e: e.time_range.start)
print("GPU events (start us rel, dur us, name):")
t0 = gpu[0].time_range.start
prev_end = None
for e in gpu:
    gap = "" if prev_end is None else f" gap {e.time_range.start - prev_end:9.1f}"
    print(f"  {e.time_range.start - t0:10.1f} {e.time_range.end - e.time_range.start:9.1f}{gap}  {e.name[:60]}")
    prev_end = e.time_range.end
cpu = sorted([e for e in events if e.device_type == DeviceType.CPU and (e.time_range.end - e.time_range.start) > 200],
             key=lambda e: e.time_range.start)
print("CPU events over 200 us (start rel, dur, name):")
for e in cpu:
    print(f"  {e.time_range.start - t0:10.1f} {e.time_range.end - e.time_range.start:9.1f}  {e.name[:80]}")
