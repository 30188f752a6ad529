"""Test-session setup shared by every test module."""

import os

import torch

# Triton reads TRITON_INTERPRET when a kernel is defined, i.e. when `kernels` is first imported; any
# test module may be the first to import it, so it is set here, before collection, on CPU machines.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import zlib  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def gen(request):
    """A generator seeded from the test's id: fresh inputs per test, reproducible per test."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def kernels_runnable():
    """Fails (never skips) a Triton test on a CPU machine where the interpreter is not active."""
    import importlib

    attention_module = importlib.import_module("kernels.entmax_attention")
    if not (torch.cuda.is_available() or attention_module.is_interpreting()):
        pytest.fail("kernels was imported before TRITON_INTERPRET=1 was set, so its Triton kernels cannot "
                    "run on this CPU machine: set TRITON_INTERPRET=1 in the environment")
