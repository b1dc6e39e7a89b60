"""Attention backward candidate: the project's one-program backward with smaller tiles.

An A/B candidate for ``benchmarks/bench_kernels.py`` (``ATTENTION_ALT="small-tiles=<this file>"``),
not used by the trainer. ``kernel_resources.py`` shows the project's backward configs using 232-255
registers per thread, some spilling, so only 2 programs of 4 warps fit on an SM (8 of its 64
warps), with 896 programs at the PRX 1.2B shapes: 3.4 waves on 132 SMs. Tiles of 32 or fewer
queries and keys hold a quarter of the scores, so they may fit more programs per SM and hide
memory latency better, at the price of more loop iterations and more dQ partial-sum traffic.

Only the backward's autotune set differs. The kernels run from a private copy of
``speedrun/kernels/triton_attention.py``, loaded here, so swapping its backward kernel leaves
the project's module as it is in the same process.
"""

from __future__ import annotations

import importlib.util
import sys

import triton

import speedrun.kernels.triton_attention as _project


def _private_copy():
    # Registered under its own name: triton.jit reads each kernel's source through its module.
    name = f"{__name__}_triton_attention"
    spec = importlib.util.spec_from_file_location(name, _project.__file__)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_copy = _private_copy()
# (BLOCK_M, BLOCK_N, num_warps, num_stages); the backward's launcher reads the module global.
_copy._attn_bwd_kernel = triton.autotune(
    configs=_copy._configs(
        [(32, 32, 4, 2), (32, 32, 2, 2), (32, 32, 4, 3), (16, 32, 2, 2), (16, 64, 4, 2), (64, 32, 4, 2)]
    ),
    key=_copy._TUNE_KEY,
)(_copy._attn_bwd_kernel.fn)
flash_attention = _copy.flash_attention
