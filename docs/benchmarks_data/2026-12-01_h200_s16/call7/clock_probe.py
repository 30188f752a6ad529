"""Does the SM clock fall under our sustained load? Single fwd+bwd calls with pauses, then back-to-back calls,
at 32k D 128 long; nvidia-smi logs clocks and power every 100 ms in the background (run.sh)."""
import sys, time, json
import torch
sys.path.insert(0, ".")
from scripts import bench_attention as b

out_dir = sys.argv[1]
q, k, v = b.make_qkv(32768, 128, b._regime_arg("long"), dtype=torch.bfloat16, device="cuda")
attn = b.build_method(sys.argv[2] if len(sys.argv) > 2 else "ours")
q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
g = torch.randn_like(q)

def call():
    torch.autograd.grad(attn(q, k, v), (q, k, v), g)

call(); torch.cuda.synchronize()
marks, times = {}, {}
for phase, pause, calls in [("single", 0.3, 10), ("back_to_back", 0.0, 30), ("single_again", 0.3, 10)]:
    marks[phase + "_start"] = time.time()
    events = []
    for _ in range(calls):
        if pause:
            time.sleep(pause)
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); call(); e.record(); events.append((s, e))
        if pause:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    marks[phase + "_end"] = time.time()
    times[phase] = [s.elapsed_time(e) for s, e in events]
    print(phase, "ms per call: median", sorted(times[phase])[len(times[phase]) // 2], "all", [round(t, 2) for t in times[phase]], flush=True)
json.dump({"marks": marks, "times": times}, open(f"{out_dir}/clock_probe.json", "w"))
