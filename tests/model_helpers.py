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


def reference_attention(q, k, v, key_mask):
    """Attention as explicit matmuls and softmax, which torch's FLOP counter sees (it misses the fused
    CPU kernel) and which any kernel must match."""
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return scores.softmax(dim=-1) @ v
