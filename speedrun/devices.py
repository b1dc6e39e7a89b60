"""The devices, parallel modes and seeds ``speedrun run`` and ``speedrun eval`` accept, and the peak FLOP
rates of known cards (for MFU); without importing torch, so that the CLI starts fast."""

from __future__ import annotations

import re
from typing import Literal, get_args

DEVICES = ("cuda", "cpu")
ParallelMode = Literal["auto", "ddp", "fsdp"]
PARALLEL_MODES: tuple[str, ...] = get_args(ParallelMode)
# torch seeds its generators with a signed 64-bit integer.
MAX_SEED = 2**63 - 1
# Peak dense bf16 tensor FLOP/s per device (NVIDIA's datasheets, half the "with sparsity" figure), for
# MFU; None where no meaningful peak is known (CPU, other cards). The first name found in the device's
# name, as whole words, wins, so the PCIe and NVL cards (lower clocks and power) come before the SXM ones.
PEAK_FLOPS = {
    "H100 PCIe": 756e12, "H100 NVL": 835e12, "H200 NVL": 835e12, "H100": 989e12, "H200": 989e12, "A100": 312e12,
}  # fmt: skip


def peak_flops_of(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of a CUDA device named ``device_name`` ("NVIDIA H100 PCIe"), or None."""
    return next((v for k, v in PEAK_FLOPS.items() if re.search(rf"\b{re.escape(k)}\b", device_name)), None)


def model_flops_utilisation(
    flops_per_step: int | None, batches_per_second: float | None, card: str | None, devices: int
) -> float | None:
    """MFU: ``flops_per_step`` x batches/s over the peak of ``devices`` cards named ``card``, or None."""
    peak = peak_flops_of(card) if card else None
    if not (flops_per_step and batches_per_second and peak):  # a CPU run has no card
        return None
    return flops_per_step * batches_per_second / (peak * devices)
