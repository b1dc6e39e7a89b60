"""iREPA: REPA with a ``Conv2d(h, D, 3, padding=1)`` projector on the token grid and targets normalised
per image and channel over the tokens (``y - alpha * mean(y)``, over ``std + 1e-6``). Under routing (no
official recipe) the visible tokens are scattered into a zero grid (as SPRINT's mask token) for the
convolution and only they are scored; normalisation statistics use the full grid."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from speedrun.components.repa import REPA, AlignParams, gather_tokens
from speedrun.protocol import ComponentContext


class IREPAParams(AlignParams):
    weight: float | None = Field(None, ge=0, description="lambda; None: 0.5 on pixel tracks, 1.0 on latent tracks.")
    alpha: float | None = Field(None, ge=0, le=1, description="Token-mean share removed; None: 0.8 pixels, 0.6 latent.")


def representation_defaults(representation: str) -> tuple[float, float]:
    """Official ``(alpha, weight)`` for a track representation: "pixels", else a latent one."""
    return (0.8, 0.5) if representation == "pixels" else (0.6, 1.0)


def spatial_normalize(y: torch.Tensor, alpha: float, eps: float = 1e-6) -> torch.Tensor:
    """``(B, N, D)``, per image and channel: minus ``alpha`` x the token mean, over the tokens' std (unbiased) + eps."""
    y = y.float()
    y = y - alpha * y.mean(dim=1, keepdim=True)
    return y / (y.std(dim=1, keepdim=True) + eps)


class IREPA(REPA):
    """iREPA (Singh et al. 2025, "What matters for representation alignment")."""

    name = "irepa"
    Params = IREPAParams

    def setup(self, ctx: ComponentContext) -> None:
        default_alpha, default_weight = representation_defaults(ctx.track.data.representation)
        self.alpha = default_alpha if self.params.alpha is None else self.params.alpha
        super().setup(ctx)
        self.weight = default_weight if self.params.weight is None else self.params.weight

    def build_projector(self, hidden: int, dim: int) -> nn.Module:
        return nn.Conv2d(hidden, dim, kernel_size=3, padding=1)

    def project(self, tokens: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        b, _, hidden = tokens.shape
        rows, cols = self.grid
        if index is not None:
            full = tokens.new_zeros(b, rows * cols, hidden)
            tokens = full.scatter(1, index[..., None].expand(-1, -1, hidden), tokens)
        grid = tokens.transpose(1, 2).reshape(b, hidden, rows, cols)
        return gather_tokens(self.projector(grid).flatten(2).transpose(1, 2), index)

    def targets(self, features: torch.Tensor) -> torch.Tensor:
        return spatial_normalize(features, self.alpha)
