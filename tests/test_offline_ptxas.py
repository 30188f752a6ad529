"""scripts/offline_ptxas.py: sm_90 code for the fused forward, built without a GPU.

The suite imports the kernels under Triton's interpreter, which cannot compile, so these tests run
the script in a subprocess without TRITON_INTERPRET."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import offline_ptxas

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_forward_ptx_targets_hopper_tensor_cores():
    done = _run("from scripts import offline_ptxas\n"
                "ptx = offline_ptxas.forward_ptx(64, n_iter=1)\n"
                "print('.target sm_90' in ptx, '.version' in ptx, 'wgmma.mma_async' in ptx)")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True", "True"]  # Hopper's warpgroup MMA for the products


def test_refuses_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", "from scripts import offline_ptxas; offline_ptxas.forward_ptx(64, 1)"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "unset TRITON_INTERPRET" in done.stderr


@pytest.mark.skipif(offline_ptxas.find_ptxas() is None, reason="needs CUDA's ptxas")
def test_ptxas_report():
    done = _run("from scripts import offline_ptxas\n"
                "tau, output = offline_ptxas.main(['--head-dims', '64', '--n-iter', '1'])\n"
                "for row in (tau, output): print(row['kernel'], row['registers'], row['spill_stores'], row['c7515'])")
    assert done.returncode == 0, done.stderr[-2000:]
    for line, kernel in zip(done.stdout.splitlines()[-2:], ("tau", "output")):
        name, registers, spills, c7515 = line.split()
        assert name == kernel and 64 <= int(registers) <= 255 and spills == "0" and c7515 in ("True", "False")
    assert done.stdout.splitlines()[2].startswith("| tau | 64 | 1 | ")
    assert done.stdout.splitlines()[3].startswith("| output | 64 | - | ")
