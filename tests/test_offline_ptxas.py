"""scripts/offline_ptxas.py: sm_90 code for the fused forward, built without a GPU.

The suite imports the kernels under Triton's interpreter, which cannot compile, so these tests run
the script in a subprocess without TRITON_INTERPRET."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import offline_ptxas

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _output_lines(code: str) -> list[str]:
    """The lines `code` printed, run compiled (no interpreter); it must exit cleanly."""
    done = _run(code)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def test_forward_ptx_targets_hopper_tensor_cores():
    lines = _output_lines("from scripts import offline_ptxas\n"
                          "ptx = offline_ptxas.forward_ptx(64, n_iter=1)\n"
                          "print('.target sm_90' in ptx, '.version' in ptx, 'wgmma.mma_async' in ptx)")
    assert " ".join(lines).split() == ["True", "True", "True"]  # Hopper's warpgroup MMA for the products


def test_refuses_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", "from scripts import offline_ptxas; offline_ptxas.forward_ptx(64, 1)"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "unset TRITON_INTERPRET" in done.stderr


@pytest.mark.skipif(offline_ptxas.find_ptxas() is None, reason="needs CUDA's ptxas")
def test_ptxas_report():
    lines = _output_lines("from scripts import offline_ptxas\n"
                          "tau, output = offline_ptxas.main(['--head-dims', '64', '--n-iter', '1'])\n"
                          "for row in (tau, output):\n"
                          "    print(row['kernel'], row['registers'], row['spill_stores'], row['c7515'])")
    for line, kernel in zip(lines[-2:], ("tau", "output")):
        name, registers, spills, c7515 = line.split()
        assert name == kernel and 64 <= int(registers) <= 255 and spills == "0" and c7515 in ("True", "False")
    assert lines[2].startswith("| tau | 64 | 1 | ")
    assert lines[3].startswith("| output | 64 | - | ")


def test_sass_loops_finds_backward_branches_only():
    """A hand-written listing: one loop (with a predicated and a modified opcode), a forward
    branch, and a divergence slow path after EXIT that jumps back (not a loop)."""
    sass = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        .L_x_0:
        /*0010*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR16], RZ ;
        /*0020*/              @!P0 FADD.FTZ R2, R2, R3 ;
        /*0030*/                   FADD R2, R2, R4 ;
        /*0040*/               @P1 BRA `(.L_x_1) ;
        /*0050*/                   ISETP.NE.AND P2, PT, R5, RZ, PT ;
        .L_x_1:
        /*0060*/               @P2 BRA `(.L_x_0) ;
        /*0070*/                   EXIT ;
        .L_x_2:
        /*0080*/                   SHFL.BFLY PT, R6, R7, 0x1, 0x1f ;
        /*0090*/                   BRA `(.L_x_1) ;
        .L_x_3:
        /*00a0*/                   BRA `(.L_x_3) ;
    """
    loops = offline_ptxas.sass_loops(sass)
    assert len(loops) == 1
    loop = loops[0]
    assert (loop["first"], loop["last"], loop["instructions"]) == (1, 6, 6)
    assert loop["opcodes"] == {"FADD": 2, "BRA": 2, "HGMMA": 1, "ISETP": 1}
    assert "sources" not in loop  # no line information in this listing


def test_sass_loops_attribute_instructions_to_source_lines():
    """With `nvdisasm -g` line information, a loop's instructions are counted per source line."""
    sass = """
        //## File "/src/k.py", line 7
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        .L_x_0:
        //## File "/src/k.py", line 9
        /*0010*/                   FADD R2, R2, R3 ;
        /*0020*/                   FADD R2, R2, R4 ;
        //## File "/src/t.py", line 3
        /*0030*/                   FMNMX R5, R5, R2, !PT ;
        //## File "/src/k.py", line 9
        /*0040*/                   FADD R2, R2, R6 ;
        /*0050*/               @P2 BRA `(.L_x_0) ;
        /*0060*/                   EXIT ;
    """
    (loop,) = offline_ptxas.sass_loops(sass)
    assert loop["instructions"] == 5
    assert loop["sources"] == [("/src/k.py", 9, 4), ("/src/t.py", 3, 1)]


@pytest.mark.skipif(offline_ptxas.find_ptxas() is None, reason="needs CUDA's ptxas")
def test_loops_report_counts_the_passes():
    """--loops: the threshold launch's dense pass and the output pass are loops with one QK^T
    (four 64x64x16 wgmma at D 64) and, in the output pass, two PV products more."""
    lines = _output_lines("import json\nfrom scripts import offline_ptxas\n"
                          "tau, output = offline_ptxas.main(['--head-dims', '64', '--n-iter', '1', '--loops',"
                          " '--source-lines', '3'])\n"
                          "print(json.dumps(sorted(loop['opcodes'].get('HGMMA', 0) for loop in tau['loops'])))\n"
                          "print(json.dumps(sorted(loop['opcodes'].get('HGMMA', 0) for loop in output['loops'])))")
    tau_hgmma, output_hgmma = (json.loads(line) for line in lines[-2:])
    # the seed tiles' histogram and refinement passes (_seed_threshold), the dense pass, the
    # histogram pass and one refinement pass: a QK^T each; compaction loops: none
    assert tau_hgmma.count(4) == 5 and set(tau_hgmma) <= {0, 4}
    assert output_hgmma.count(12) == 1 and set(output_hgmma) <= {0, 12}
    assert any(line.startswith("| tau | 64 | 1 | ") for line in lines)
    assert any("instructions | HGMMA" in line for line in lines)
    # --source-lines: each loop's heaviest source lines, with their text, from the kernels' files
    assert any(line.startswith("tau | head dim 64 | loop ") for line in lines)
    assert any(re.match(r"\s+\d+  (entmax_attention|_tau)\.py:\d+  \S", line) for line in lines)


@pytest.mark.skipif(offline_ptxas.find_ptxas() is None, reason="needs CUDA's ptxas")
def test_backward_kernels_report():
    """--backward adds the dQ and dK/dV kernels: Hopper tensor cores, registers in range, and a
    loop with the dK/dV kernel's four products (16 HGMMA at head dim 64) per non-zero tile pair."""
    lines = _output_lines("from scripts import offline_ptxas\n"
                          "rows = offline_ptxas.main(['--head-dims', '64', '--n-iter', '1', '--backward', '--loops'])\n"
                          "print('wgmma.mma_async' in offline_ptxas.backward_ptx(64, 'bwd_dq'))\n"
                          "for row in rows[2:]:\n"
                          "    print(row['kernel'], row['registers'],"
                          " max(loop['opcodes'].get('HGMMA', 0) for loop in row['loops']))")
    assert lines[-3] == "True"
    dq, dkdv = (line.split() for line in lines[-2:])
    assert dq[0] == "bwd_dq" and 64 <= int(dq[1]) <= 255 and dq[2] == "12"
    assert dkdv[0] == "bwd_dkdv" and 64 <= int(dkdv[1]) <= 255 and dkdv[2] == "16"
    assert any(line.startswith("| bwd_dkdv | 64 | - | ") for line in lines)


@pytest.mark.skipif(offline_ptxas.find_ptxas() is None, reason="needs CUDA's ptxas")
def test_fused_threshold_launch_is_built_with_its_register_cap():
    """As _forward launches it at head dim 64 with the fused final pass, the threshold launch
    carries ptxas's register cap (four programs per multiprocessor) and does not spill under it."""
    marked, numbers = _output_lines(
        "from scripts import offline_ptxas\n"
        "ptx = offline_ptxas.forward_ptx(64, 4, kernel='tau', fused_output=True)\n"
        "print('.maxnreg' in ptx)\n"
        "report = offline_ptxas.ptxas_report(ptx, offline_ptxas.find_ptxas())\n"
        "print(report['registers'], report['spill_stores'],"
        " offline_ptxas.entmax_attention._TAU_LAUNCH_MAX_REGISTERS)")[-2:]
    registers, spills, cap = (int(x) for x in numbers.split())
    assert marked == "True" and registers <= cap and spills == 0


def test_backward_kernels_leave_room_for_two_programs_at_head_dim_128():
    """At head dim 128 both backward kernels run with 2 stages (_launch_options): two programs of
    each fit in a multiprocessor's 228 KiB of shared memory (1 KiB of it reserved per program).
    With the common 3 stages the dQ kernel took 128 KiB, one program per multiprocessor."""
    lines = _output_lines("from scripts import offline_ptxas\n"
                          "for kernel in offline_ptxas.BACKWARD_KERNELS:\n"
                          "    print(kernel, offline_ptxas.backward_kernel(128, kernel).metadata.shared)")
    shared = dict(line.split() for line in lines[-2:])
    assert set(shared) == {"bwd_dq", "bwd_dkdv"}
    for kernel, size in shared.items():
        assert 2 * (int(size) + 1024) <= 228 * 1024, (kernel, size)


@pytest.mark.skipif(offline_ptxas.find_ptxas() is None, reason="needs CUDA's ptxas")
def test_threshold_launch_at_head_dim_128_fits_four_programs():
    """At head dim 128 (alpha 1.5, plain passes) the threshold launch carries the register cap and
    runs 2 stages (_tau_launch_options): four programs fit a multiprocessor both in registers (64
    Ki, 128 per thread of 4 warps) and in shared memory (228 KiB, 1 KiB of it reserved per
    program). With the common 3 stages one program took 64 KiB, three per multiprocessor."""
    lines = _output_lines(
        "from scripts import offline_ptxas\n"
        "compiled = offline_ptxas.forward_kernel(128, 4, kernel='tau')\n"
        "report = offline_ptxas.ptxas_report(compiled.asm['ptx'], offline_ptxas.find_ptxas())\n"
        "print('.maxnreg' in compiled.asm['ptx'], report['registers'], compiled.metadata.shared)")
    marked, registers, shared = lines[-1].split()
    assert marked == "True" and int(registers) <= 128
    assert 4 * (int(shared) + 1024) <= 228 * 1024, shared


@pytest.mark.skipif(offline_ptxas.find_ptxas() is None, reason="needs CUDA's ptxas")
def test_kernels_read_their_tiles_by_tma_where_the_switch_says():
    """At head dim 128 all four launches load their per-tile operands with TMA bulk copies
    (_load_head_tile, _TMA_LOAD_HEAD_DIMS), which take per-thread addresses out of the registers:
    offline the dK/dV kernel spilled 88 bytes and the threshold launch 40 with pointer loads. At
    head dim 64 all but the dK/dV kernel do."""
    lines = _output_lines(
        "from scripts import offline_ptxas\n"
        "for head_dim in (64, 128):\n"
        "    builds = {'tau': offline_ptxas.forward_kernel(head_dim, 4, kernel='tau'),\n"
        "              'output': offline_ptxas.forward_kernel(head_dim, 4, kernel='output')}\n"
        "    for kernel in offline_ptxas.BACKWARD_KERNELS:\n"
        "        builds[kernel] = offline_ptxas.backward_kernel(head_dim, kernel)\n"
        "    for kernel, compiled in builds.items():\n"
        "        ptx = compiled.asm['ptx']\n"
        "        report = offline_ptxas.ptxas_report(ptx, offline_ptxas.find_ptxas())\n"
        "        print(head_dim, kernel, 'cp.async.bulk.tensor' in ptx, report['spill_stores'])")
    rows = {(int(d), kernel): (tma == "True", int(spill)) for d, kernel, tma, spill in
            (line.split() for line in lines[-8:])}
    assert {key: tma for key, (tma, _) in rows.items()} == {
        (head_dim, kernel): head_dim == 128 or kernel != "bwd_dkdv" for head_dim in (64, 128)
        for kernel in ("tau", "output", *offline_ptxas.BACKWARD_KERNELS)}
    assert rows[(128, "bwd_dkdv")][1] <= 32 and rows[(128, "tau")][1] <= 32
