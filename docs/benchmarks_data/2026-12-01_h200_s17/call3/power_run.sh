#!/usr/bin/env bash
# Seventeenth session: does either method draw the power cap under sustained load? (.cache/power_probe.py)
set -o pipefail
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.cache/triton
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
cd .cache/ab29/mix
for nd in "8192 128" "4096 64"; do
  set -- $nd
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw.instant,power.draw,temperature.gpu,clocks_event_reasons.active --format=csv,noheader -lms 50 > $OUT/smi_n$1_d$2.csv 2>&1 &
  SMI=$!
  timeout $((280 - SECONDS / 2)) python3 ../../power_probe.py $OUT $1 $2 > $OUT/power_probe_n$1_d$2.log 2>&1
  kill $SMI; echo n$1 d$2 $SECONDS; cat $OUT/power_probe_n$1_d$2.log | tail -7
  python3 - $1 $2 <<'PY'
import json, os, sys, datetime
out, n, d = os.environ["OUT"], sys.argv[1], sys.argv[2]
try:
    phases = json.load(open(f"{out}/power_probe_n{n}_d{d}.json"))
except Exception as e:
    print("no json", e); raise SystemExit
rows = []
for line in open(f"{out}/smi_n{n}_d{d}.csv"):
    p = [x.strip() for x in line.split(",")]
    try:
        ts = datetime.datetime.strptime(p[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
        rows.append((ts, float(p[1].split()[0]), float(p[2].split()[0]), p[5]))
    except Exception:
        pass
for ph in phases:
    mid = (ph["start"] + ph["end"]) / 2
    sel = [r for r in rows if mid <= r[0] <= ph["end"]]
    if sel:
        print(ph["method"], "median ms", round(ph["median_second_half"], 4), "| second half: samples", len(sel),
              "SM MHz mean", round(sum(r[1] for r in sel) / len(sel)), "min", min(r[1] for r in sel),
              "power W mean", round(sum(r[2] for r in sel) / len(sel)), "max", max(r[2] for r in sel), "reasons", sorted({r[3] for r in sel}))
PY
done
