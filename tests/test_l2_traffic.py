"""scripts/l2_traffic.py: reading Nsight Compute's raw CSV export and tabulating it (no GPU)."""

import pytest

from scripts import l2_traffic

M = l2_traffic.METRICS


def _export(tmp_path, units: dict, rows: list[dict], name="ours.csv"):
    """A file laid out as `ncu -i R --csv --page raw` writes it: a ==PROF== line, the column names,
    their units, then one row per launch (numbers with thousands separators, as ncu prints them)."""
    columns = ["ID", "Process ID", "Kernel Name", *units]
    lines = ['==PROF== Disconnected from process 1', ",".join(f'"{c}"' for c in columns),
             ",".join(f'"{u}"' for u in ["", "", "", *units.values()])]
    for i, row in enumerate(rows):
        lines.append(",".join(f'"{v}"' for v in [i, 7, row["kernel"], *(row.get(m, "") for m in units)]))
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reads_base_and_scaled_units(tmp_path):
    # "ns" as the H200's ncu (2025) prints it with --print-units base; "nsecond" in older versions
    units = {M["time"]: "ns", M["l2_bytes"]: "byte", M["clock"]: "hz", M["l2_pct"]: "%",
             M["dram_bytes"]: "Mbyte", M["instructions"]: "inst"}
    path = _export(tmp_path, units, [
        {"kernel": "_entmax_attention_tau_kernel(float*, int)", M["time"]: "681,250", M["l2_bytes"]: "4,096,000,000",
         M["clock"]: "1,980,000,000", M["l2_pct"]: "71.5", M["dram_bytes"]: "12.5", M["instructions"]: "1,000,000"},
        {"kernel": "_entmax_attention_output_kernel", M["time"]: "377,000", M["l2_bytes"]: "n/a"},
    ])
    tau, output = l2_traffic.read_ncu_raw_csv(path)
    assert tau == {"kernel": "_entmax_attention_tau_kernel(float*, int)", "time": pytest.approx(681.25e-6),
                   "l2_bytes": 4.096e9, "clock": 1.98e9, "l2_pct": 71.5, "dram_bytes": pytest.approx(12.5e6),
                   "instructions": 1e6}
    assert output == {"kernel": "_entmax_attention_output_kernel", "time": pytest.approx(377e-6)}  # n/a, empty: out

    text = l2_traffic.table([("ours", [tau, output])])
    lines = text.splitlines()
    assert lines[2] == ("| ours | _entmax_attention_tau_kernel | 0.681 | 1980 | 4.10 | 6.01 | 72 | 0.01 | - | - "
                        "| 0.001 |")  # 4.096 GB / 0.68125 ms = 6.01 TB/s
    assert lines[3].startswith("| ours | _entmax_attention_output_kernel | 0.377 | - | - | - |")
    assert lines[4] == "| ours | **all** | 1.058 | | 4.10 | 3.87 | | 0.01 | | | 0.001 |"


def test_scaled_time_and_unknown_unit(tmp_path, capsys):
    path = _export(tmp_path, {M["time"]: "msecond", M["l2_bytes"]: "Gbyte", M["sm_pct"]: "furlong"},
                   [{"kernel": "_get_tau", M["time"]: "2.5", M["l2_bytes"]: "1.5", M["sm_pct"]: "80"}])
    (launch,) = l2_traffic.read_ncu_raw_csv(path)
    assert launch == {"kernel": "_get_tau", "time": pytest.approx(2.5e-3), "l2_bytes": pytest.approx(1.5e9)}
    assert "unknown ncu unit 'furlong'" in capsys.readouterr().err


def test_rejects_other_files(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text('"time","ms"\n"1","2"\n')
    with pytest.raises(ValueError, match="not an ncu raw CSV export"):
        l2_traffic.read_ncu_raw_csv(path)


def test_metrics_list_and_table_command(tmp_path):
    assert l2_traffic.main(["metrics"]).split(",") == list(M.values())
    assert M["dram_pct"] not in l2_traffic.main(["metrics", "--without", "dram_pct"])
    path = _export(tmp_path, {M["time"]: "nsecond"}, [{"kernel": "_bwd_q_kernel", M["time"]: "1,000"}],
                   name="adasplash_n8192.csv")
    assert "| adasplash_n8192 | _bwd_q_kernel | 0.001 |" in l2_traffic.main(["table", str(path)])
