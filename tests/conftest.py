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


@pytest.fixture(scope="module")
def single_thread():
    """Small tensors: one intra-op thread avoids OpenMP overhead on busy CI cores. Use per module with
    `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def poisoned_empty(monkeypatch):
    """torch.empty / empty_like return NaN-filled floats and garbage ints, so any output element a
    kernel leaves unwritten shows up in the comparison."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(107)

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(real_empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(real_empty_like(*a, **kw)))


@pytest.fixture
def gpt2_file():
    """The offline GPT-2 BPE file, or a skip where no package ships it (openai-whisper, a dependency that
    the README install brings; a bare GPU image may lack it)."""
    from adasplash_train.data.tokenizers import resolve_gpt2_bpe_file

    try:
        return resolve_gpt2_bpe_file()
    except FileNotFoundError:
        pytest.skip("no GPT-2 BPE file on this machine (pip install openai-whisper to run this test)")
