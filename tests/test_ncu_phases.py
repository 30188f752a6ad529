"""scripts/ncu_phases.py: charging an ncu source/SASS export to the forward kernel's passes."""

import csv
from pathlib import Path

import pytest

from scripts import ncu_phases

KERNELS = Path(__file__).resolve().parent.parent / "kernels"


def _line_of(ranges, file_name, function):
    """A line inside `function` that no nested function claims."""
    first, last, _ = next(r for r in ranges[file_name] if r[2] == function)
    return next(line for line in range(first, last + 1)
                if ncu_phases.function_at(ranges, f"/x/kernels/{file_name}", line) == function)


def _write_export(path, blocks):
    """blocks: (file path, line, [samples of each SASS instruction under it]), in address order."""
    address = 0x1000
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["Kernel Name", "_entmax_attention_tau_kernel"])
        current_file = None
        for file_path, line, samples in blocks:
            if file_path != current_file:
                out.writerow(["File Path", file_path])
                out.writerow(["Function Name", "_entmax_attention_tau_kernel"])
                out.writerow(["Line No", "Source", "Address", "Source", "Warp Stall Sampling (All Samples)", "x"])
                current_file = file_path
            out.writerow([str(line), "src", "-", "-", str(sum(samples)), "0"])
            for s in samples:
                out.writerow(["", "", hex(address), "  FFMA R1, R2, R3, R4", str(s), "0"])
                address += 16
            out.writerow(["", "", "...", "...", "-", "-"])


def test_passes_are_charged_in_program_order(tmp_path, capsys):
    ranges = ncu_phases.function_ranges(KERNELS)
    attention, tau = "/x/kernels/entmax_attention.py", "/x/kernels/_tau.py"
    line = lambda f, fn: _line_of(ranges, f.rsplit("/", 1)[-1], fn)  # noqa: E731
    triton_std = "/site-packages/triton/language/standard.py"
    blocks = [
        (attention, line(attention, "_dense_pass"), [5, 5]),
        (attention, line(attention, "_load_rows"), [3]),          # inlined by the dense pass
        (attention, line(attention, "_compact_candidates"), [1]),
        (attention, line(attention, "_histogram_pass"), [2]),
        (tau, line(tau, "histogram_rows"), [20, 10]),
        (triton_std, 263, [7]),                                    # a reduction inside the histogram
        (tau, line(tau, "bracket_from_histogram"), [1]),
        (attention, line(attention, "_drop_zero_tiles"), [1]),     # still the bracket stage
        (attention, line(attention, "_refine_pass"), [4]),
        (tau, line(tau, "halley_update"), [1]),
        (attention, line(attention, "_refine_pass"), [1]),         # interleaved with the update: same pass
        (attention, line(attention, "_drop_zero_tiles"), [1]),
        (attention, line(attention, "_refine_pass"), [6]),         # second pass
        (tau, line(tau, "power_sums"), [2]),
        (tau, line(tau, "halley_update"), [1]),
        (attention, line(attention, "_drop_zero_tiles"), [1]),
        (attention, line(attention, "_output_pass"), [9]),
        (attention, line(attention, "_dot"), [3]),                 # inlined by the output pass
    ]
    export = tmp_path / "source.csv"
    _write_export(export, blocks)
    totals = ncu_phases.main([str(export), "--kernels-dir", str(KERNELS)])
    assert totals == {"_dense_pass": 13, "_compact_candidates": 1, "_histogram_pass": 39,
                      "bracket_from_histogram": 2, "_refine_pass#1": 7, "_refine_pass#2": 10,
                      "_output_pass": 12}
    table = capsys.readouterr().out
    assert "| _histogram_pass | 39 | 46.4% |" in table


def test_an_export_without_sass_rows_is_an_error(tmp_path):
    export = tmp_path / "cuda_only.csv"
    export.write_text('"File Name","/x/kernels/entmax_attention.py"\n"Line No","Source"\n"1","x"\n')
    with pytest.raises(SystemExit, match="print-source cuda,sass"):
        ncu_phases.main([str(export)])
