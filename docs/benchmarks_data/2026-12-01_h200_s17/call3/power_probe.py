"""Sustained-load probe: adasplash and ours (D 128, 8k, long regime) each run back to back for a few
seconds, with pauses in between, in the order A O O A; nvidia-smi logs the SM clock and instant power
every 50 ms (power_run.sh). Per phase: median ms per fwd+bwd call over its second half, and the clock."""
import sys, time, json
import torch
sys.path.insert(0, ".")
from scripts import bench_attention as b

out_dir, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
q, k, v = b.make_qkv(n, d, b._regime_arg("long"), dtype=torch.bfloat16, device="cuda")
q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
g = torch.randn_like(q)
methods = {name: b.build_method(name) for name in ("adasplash", "ours")}

def call(attn):
    torch.autograd.grad(attn(q, k, v), (q, k, v), g)

for attn in methods.values():
    for _ in range(3):
        call(attn)
torch.cuda.synchronize()
phases = []
for name in ("adasplash", "ours", "ours", "adasplash", "adasplash", "ours"):
    time.sleep(4.0)
    start = time.time()
    events = []
    while time.time() - start < 4.0:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); call(methods[name]); e.record(); events.append((s, e))
        if len(events) % 8 == 0:
            events[-8][1].synchronize()  # keep the queue short, so that wall time tracks the GPU
    torch.cuda.synchronize()
    end = time.time()
    times = [s.elapsed_time(e) for s, e in events]
    half = sorted(times[len(times) // 2:])
    phases.append(dict(method=name, start=start, end=end, calls=len(times), first=times[:5],
                       median_second_half=half[len(half) // 2]))
    print(name, len(times), "calls; median ms (second half)", round(half[len(half) // 2], 4), flush=True)
json.dump(phases, open(f"{out_dir}/power_probe_n{n}_d{d}.json", "w"))
