"""Helpers shared by model and component tests (tests/ is on sys.path through its conftest)."""

from __future__ import annotations

import torch

from speedrun.model import PRXDenoiser


def randomized(model: PRXDenoiser, seed: int = 0, std: float = 0.1) -> PRXDenoiser:
    """Replace every weight by noise so zero-initialised modulations and the output layer do something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model
