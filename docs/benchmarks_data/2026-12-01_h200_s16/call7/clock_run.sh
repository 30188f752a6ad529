export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.cache/triton
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.active --format=csv,noheader -lms 100 > $OUT/smi.csv 2>&1 &
SMI=$!
timeout 180 python3 .cache/clock_probe.py $OUT ${METHOD:-ours} > $OUT/clock_probe.log 2>&1
kill $SMI
cat $OUT/clock_probe.log | tail -5
python3 - <<'PY'
import json, os, datetime
out = os.environ["OUT"]
try:
    d = json.load(open(f"{out}/clock_probe.json"))
except Exception as e:
    print("no probe json", e); raise SystemExit
rows = []
for line in open(f"{out}/smi.csv"):
    parts = [p.strip() for p in line.split(",")]
    try:
        ts = datetime.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
        rows.append((ts, float(parts[1].split()[0]), float(parts[3].split()[0]), parts[5]))
    except Exception:
        pass
m = d["marks"]
for phase in ("single", "back_to_back", "single_again"):
    sel = [r for r in rows if m[phase + "_start"] <= r[0] <= m[phase + "_end"]]
    if sel:
        print(phase, "samples", len(sel), "sm MHz mean", round(sum(r[1] for r in sel) / len(sel)), "min", min(r[1] for r in sel),
              "power W mean", round(sum(r[2] for r in sel) / len(sel)), "max", max(r[2] for r in sel), "reasons", sorted({r[3] for r in sel}))
PY
