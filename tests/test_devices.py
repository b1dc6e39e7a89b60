"""The peak FLOP table and MFU, MFU's denominator per NVIDIA's datasheets (dense bf16)."""

from __future__ import annotations

import pytest

from speedrun.devices import model_flops_utilisation, peak_flops_of


@pytest.mark.parametrize(
    "name, tflops",
    [
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H100 NVL", 835),
        ("NVIDIA H200", 989),
        ("NVIDIA H200 NVL", 835),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA A100 80GB PCIe", 312),
        ("NVIDIA GeForce RTX 4090", None),
        ("NVIDIA RTX A1000 Laptop GPU", None),
    ],
)
def test_peak_flops_by_device_name(name, tflops):
    """MFU's denominator, dense bf16 per NVIDIA's datasheets: a PCIe or NVL card is not charged the
    SXM peak its name also contains (that understated their MFU by up to 24%)."""
    peak = peak_flops_of(name)
    assert peak == (None if tflops is None else tflops * 1e12)


def test_mfu_is_model_flops_over_the_peak_of_every_device():
    # 1e15 FLOPs per step at 2 steps/s on 4 H100 SXM (989 TFLOP/s each): 2e15 / 3.956e15.
    assert model_flops_utilisation(10**15, 2.0, "NVIDIA H100 80GB HBM3", 4) == pytest.approx(2e15 / (4 * 989e12))


@pytest.mark.parametrize(
    "flops, speed, card", [(0, 2.0, "NVIDIA H100"), (10**15, None, "NVIDIA H100"), (10**15, 2.0, None),
                           (10**15, 2.0, "NVIDIA GeForce RTX 4090")],
)  # fmt: skip
def test_mfu_is_unknown_without_flops_speed_or_a_known_card(flops, speed, card):
    assert model_flops_utilisation(flops, speed, card, 1) is None
