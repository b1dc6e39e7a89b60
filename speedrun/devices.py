"""The devices, parallel modes and seeds ``speedrun run`` and ``speedrun eval`` accept.

Defined once here, without importing torch, so that the CLI (which builds its option choices from
them at import) starts fast; the worker, the option checks and ``speedrun.distributed`` use them too.
"""

from __future__ import annotations

from typing import Literal, get_args

DEVICES = ("cuda", "cpu")
ParallelMode = Literal["auto", "ddp", "fsdp"]
PARALLEL_MODES: tuple[str, ...] = get_args(ParallelMode)
# torch seeds its generators with a signed 64-bit integer.
MAX_SEED = 2**63 - 1
