"""Per-kernel GPU time of one forward+backward call (torch.profiler), ours vs adasplash."""
import sys, torch
sys.path.insert(0, '.')
from scripts import bench_attention as ba
from torch.profiler import profile, ProfilerActivity
CALLS = 20
for n in [int(x) for x in sys.argv[1].split(',')]:
    for regime in sys.argv[2].split(','):
        q, k, v = ba.make_qkv(n, 64, regime, dtype=torch.bfloat16, device='cuda')
        sets = ba.input_sets_for(q, k, v, 2)
        for name in sys.argv[3].split(','):
            att = ba.build_method(name)
            run = ba._cycle(att, sets, True)
            for _ in range(5): run()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(CALLS): run()
                torch.cuda.synchronize()
            rows = [(e.self_device_time_total / CALLS, e.count / CALLS, e.key) for e in prof.key_averages()
                    if e.self_device_time_total > 0]
            rows.sort(reverse=True)
            total = sum(r[0] for r in rows)
            print(f"== {name} N={n} {regime}: GPU {total/1e3:.3f} ms per fwd+bwd", flush=True)
            for us, cnt, key in rows[:12]:
                print(f"   {us/1e3:8.3f} ms  x{cnt:4.1f}  {key[:90]}")
# registers / spills / shared memory of our compiled kernels
try:
    ea = sys.modules["kernels.entmax_attention"]
    for name in dir(ea):
        fn = getattr(ea, name)
        if not name.startswith("_entmax_attention") or not hasattr(fn, "device_caches"):
            continue
        for dev, entry in fn.device_caches.items():
            cache = entry[0] if isinstance(entry, tuple) else entry
            for key, ck in cache.items():
                print(f"   [{name}] regs {getattr(ck, 'n_regs', '?')} spills {getattr(ck, 'n_spills', '?')} "
                      f"shared {getattr(ck.metadata, 'shared', '?')} warps {getattr(ck.metadata, 'num_warps', '?')} "
                      f"maxnreg {getattr(ck.metadata, 'maxnreg', '?')}")
except Exception as err:  # diagnostics only
    print("kernel metadata unavailable:", err)
