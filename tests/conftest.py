"""Test-session setup shared by every test module."""

import os

import torch

# Triton reads TRITON_INTERPRET when a kernel is defined, i.e. when `kernels` is first imported; any
# test module may be the first to import it, so it is set here, before collection, on CPU machines.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
