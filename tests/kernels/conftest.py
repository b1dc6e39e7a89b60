"""Kernel tests: run the Triton kernels through the interpreter on CPU when no GPU is present.

``triton.jit`` picks compile-or-interpret when a kernel is *decorated*, i.e. when
``speedrun.kernels.triton_rope`` / ``triton_attention`` are first imported, so ``TRITON_INTERPRET``
must be set before that import (importing triton itself earlier is harmless: the flag is read
lazily). pytest imports this conftest before it collects the modules beside it, and nothing in
``speedrun`` imports the kernel modules eagerly (``speedrun.kernels.dispatch`` imports them lazily,
and only for CUDA tensors); if a test collected earlier did import them, the kernels would already
be compiled-mode objects and would fail on CPU, so that is turned into an explicit error here.

The variable is set for the whole pytest process, as it must be. On a machine without a GPU nothing
else runs Triton (torch.compile's CPU backend emits C++), so other test directories are unaffected.
With a GPU nothing is set and the same tests run compiled.
"""

import os
import sys

import pytest
import torch

_KERNEL_MODULES = ("speedrun.kernels.triton_rope", "speedrun.kernels.triton_attention")

if not torch.cuda.is_available():
    _stale = [name for name in _KERNEL_MODULES if name in sys.modules]
    if _stale and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"{_stale} were imported before tests/kernels/conftest.py could set TRITON_INTERPRET=1; "
            "their kernels are compiled-mode and cannot run on CPU. Import them lazily elsewhere."
        )
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture
def device() -> torch.device:
    """CUDA when present (compiled kernels), else CPU (interpreted kernels)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
