"""Kernel tests: run the Triton kernels through the interpreter on CPU when no GPU is present.

Triton picks compile-or-interpret when a function is decorated with ``triton.jit``, and its own
language helpers (``tl.zeros`` and friends) are decorated when ``triton.language`` is first
imported. So ``TRITON_INTERPRET=1`` must be in the environment before *anything* imports triton
(importing torch alone does not; torch._dynamo, which torchvision and clean-fid pull in, does).

Setting it here works when this directory runs on its own (``pytest tests/kernels``). In a full
run, test modules collected earlier may already have imported triton in compiled mode; the
kernel tests then fail with an explanation instead of an obscure interpreter error. The fix is to
set the variable in the first conftest pytest loads (``tests/conftest.py``), e.g.::

    if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

That is safe for the rest of the suite: on a machine without a GPU nothing else runs Triton
(torch.compile's CPU backend emits C++). With a GPU nothing is set and the same tests run compiled.
"""

import os
import sys

import pytest
import torch

CUDA = torch.cuda.is_available()
# Recorded before this file touches the environment: was triton already loaded in compiled mode?
_TRITON_COMPILED_MODE = "triton.language" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"

if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def _interpreter_ready() -> None:
    if not CUDA and _TRITON_COMPILED_MODE:
        pytest.fail(
            "triton was imported before tests/kernels/conftest.py could set TRITON_INTERPRET=1, so "
            "its kernels cannot run on this GPU-less machine; set it in tests/conftest.py (see "
            "tests/kernels/conftest.py)",
            pytrace=False,
        )


@pytest.fixture
def device() -> torch.device:
    """CUDA when present (compiled kernels), else CPU (interpreted kernels)."""
    return torch.device("cuda" if CUDA else "cpu")
