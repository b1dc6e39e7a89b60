"""iREPA: REPA with a convolutional projector and spatially normalised teacher features.

Differences from :mod:`speedrun.components.repa` (same teacher handling, hook and loss form):

* projector ``Conv2d(h, D, 3, padding=1)`` on the token grid, so each projected token sees its
  3x3 neighbourhood;
* targets normalised over the tokens of each image, per channel:
  ``y <- y - alpha * mean_tokens(y)``, then ``y <- y / (std_tokens(y) + 1e-6)``, which removes the
  global component shared by all tokens and keeps the spatial structure;
* defaults from the official code by the track's representation: ``alpha`` 0.8 and ``weight`` 0.5
  on pixel tracks, 0.6 and 1.0 on latent tracks (when left unset).

Under token routing (TREAD) the convolution needs the whole grid. There is no official recipe for
this case; here the visible tokens are scattered into a zero grid (zeros stand for the routed-away
tokens, as SPRINT's mask token), the convolution runs on it, and the loss compares only the visible
positions. The normalisation statistics always come from the teacher's full grid.

As REPA, the teacher reads the real images, so a latent track must keep its train images
(``data.train_images``, as prx-256 does); one that does not is refused at setup.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from speedrun.components.base import ComponentContext
from speedrun.components.repa import REPA, AlignParams

# Official iREPA defaults: (alpha, weight) by the space the denoiser works in.
DEFAULTS = {"latent": (0.6, 1.0), "pixels": (0.8, 0.5)}
STD_EPS = 1e-6


class IREPAParams(AlignParams):
    weight: float | None = Field(None, ge=0, description="lambda; None: 0.5 on pixel tracks, 1.0 on latent tracks.")
    alpha: float | None = Field(
        None, ge=0, le=1, description="Share of the token mean removed; None: 0.8 on pixel tracks, 0.6 on latent."
    )


def representation_defaults(representation: str) -> tuple[float, float]:
    """``(alpha, weight)`` defaults for a track representation ("pixels" or a latent one)."""
    return DEFAULTS["pixels" if representation == "pixels" else "latent"]


def spatial_normalize(y: torch.Tensor, alpha: float, eps: float = STD_EPS) -> torch.Tensor:
    """``(B, N, D)``: per image and channel, subtract ``alpha`` times the token mean, divide by the
    tokens' standard deviation (unbiased) plus ``eps``; float32."""
    y = y.float()
    y = y - alpha * y.mean(dim=1, keepdim=True)
    return y / (y.std(dim=1, keepdim=True) + eps)


class IREPA(REPA):
    """iREPA (Singh et al. 2025, "What matters for representation alignment")."""

    name = "irepa"
    Params = IREPAParams

    def setup(self, ctx: ComponentContext) -> None:
        default_alpha, _ = representation_defaults(ctx.track.data.representation)
        self.alpha = default_alpha if self.params.alpha is None else self.params.alpha
        super().setup(ctx)

    def resolve_weight(self, ctx: ComponentContext) -> float:
        _, default_weight = representation_defaults(ctx.track.data.representation)
        return default_weight if self.params.weight is None else self.params.weight

    def build_projector(self, hidden: int, dim: int) -> nn.Module:
        return nn.Conv2d(hidden, dim, kernel_size=3, padding=1)

    def project(self, tokens: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        b, _, hidden = tokens.shape
        rows, cols = self.grid
        if index is not None:
            full = tokens.new_zeros(b, rows * cols, hidden)
            tokens = full.scatter(1, index[..., None].expand(-1, -1, hidden), tokens)
        grid = tokens.transpose(1, 2).reshape(b, hidden, rows, cols)
        out = self.projector(grid).flatten(2).transpose(1, 2)
        if index is not None:
            out = out.gather(1, index[..., None].expand(-1, -1, out.shape[-1]))
        return out

    def targets(self, features: torch.Tensor) -> torch.Tensor:
        return spatial_normalize(features, self.alpha)
