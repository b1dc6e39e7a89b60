"""Attention backward candidate: the project's one-program backward with smaller tiles.

An A/B candidate for ``benchmarks/bench_kernels.py`` (``ATTENTION_ALT="small-tiles=<this file>"``),
not used by the trainer. ``kernel_resources.py`` shows the project's backward configs using 232-255
registers per thread, some spilling, so only 2 programs of 4 warps fit on an SM (8 of its 64
warps), with 896 programs at the PRX 1.2B shapes: 3.4 waves on 132 SMs. Tiles of 32 or fewer
queries and keys hold a quarter of the scores, so they may fit more programs per SM and hide
memory latency better, at the price of more loop iterations and more dQ partial-sum traffic.

Only the backward's autotune set differs. The kernels run from a private copy of
``speedrun/kernels/triton_attention.py``, loaded here, so swapping its backward kernel leaves
the project's module as it is in the same process. Like every candidate it runs with
``benchmarks/`` importable (bench_kernels.py and kernel_resources.py are scripts there).
"""

from __future__ import annotations

from pathlib import Path

import triton
from bench_kernels import load_module_copy

import speedrun.kernels.triton_attention as _project

_copy = load_module_copy(Path(_project.__file__), f"{__name__}_triton_attention")
# (BLOCK_M, BLOCK_N, num_warps, num_stages); the backward's launcher reads the module global.
_copy._attn_bwd_kernel = triton.autotune(
    configs=_copy._configs(
        [(32, 32, 4, 2), (32, 32, 2, 2), (32, 32, 4, 3), (16, 32, 2, 2), (16, 64, 4, 2), (64, 32, 4, 2)]
    ),
    key=_copy._TUNE_KEY,
)(_copy._attn_bwd_kernel.fn)
flash_attention = _copy.flash_attention
