"""A worked custom component: deep supervision of one block's image tokens.

A trainable linear head reads the image tokens after block ``layer`` (1-based) and predicts, per
token, the velocity target ``noise - x0`` of that token's patch; ``weight`` times its MSE joins the
loss. The head trains with the denoiser and is dropped at evaluation, so the evaluated model is the
track's architecture unchanged. Only the public API of ``speedrun.components`` is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from speedrun.components import Component, ComponentContext, Params, SpeedrunError, StepState, TrainBatch


class DeepSupervisionParams(Params):
    layer: int = Field(1, ge=1, description="1-based block whose output tokens are supervised.")
    weight: float = Field(0.1, ge=0, description="Weight of the auxiliary MSE.")


def to_patches(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, H, W) -> (B, N, C*p*p)``: the denoiser's token order (row-major grid, features c, py, px)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


class DeepSupervision(Component):
    name = "deep-supervision"
    Params = DeepSupervisionParams
    params: DeepSupervisionParams

    def setup(self, ctx: ComponentContext) -> None:
        cfg = ctx.model.config
        if self.params.layer > cfg.depth:
            raise SpeedrunError(
                f"deep-supervision: params.layer = {self.params.layer}, but the denoiser has {cfg.depth} blocks "
                f"(allowed: 1..{cfg.depth})"
            )
        self.patch = cfg.patch_size
        # Saved as components.deep_supervision.* in checkpoints, never loaded by the evaluator.
        self.head = ctx.add_trainable("deep_supervision", nn.Linear(cfg.hidden_size, cfg.patch_dim))

    def hooks(self):
        def keep(tokens: torch.Tensor, state: StepState) -> torch.Tensor:
            if state.training:  # validation and evaluation forwards need nothing from us
                state.records[self.name] = (tokens, state.token_index)
            return tokens

        return {self.params.layer - 1: (None, keep)}

    def losses(self, batch: TrainBatch, prediction: torch.Tensor, state: StepState) -> dict[str, torch.Tensor]:
        tokens, index = state.records.pop(self.name)
        target = to_patches(batch.noise - batch.x0, self.patch)
        if index is not None:  # a routing component kept only some tokens: supervise those
            target = target.gather(1, index[..., None].expand(-1, -1, target.shape[-1]))
        return {self.name: self.params.weight * F.mse_loss(self.head(tokens).float(), target.float())}
