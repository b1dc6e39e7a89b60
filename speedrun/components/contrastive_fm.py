"""Contrastive flow matching: push each prediction away from another sample's target.

Loss ``contrastive_fm = -weight * MSE(v_hat, roll(noise - x0, 1, batch axis))``, ``v_hat`` the velocity the
prediction implies: with the objective's MSE, Stoica et al.'s ``|v - v_i|^2 - lambda |v - v_j|^2``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from speedrun.flow import velocity_from_prediction, velocity_target
from speedrun.protocol import Component, Params, StepState, TrainBatch


class ContrastiveFMParams(Params):
    weight: float = Field(0.05, ge=0, description="lambda of the contrastive term.")


class ContrastiveFM(Component):
    """Contrastive flow matching (Stoica et al. 2025)."""

    name = "contrastive-fm"
    Params = ContrastiveFMParams
    params: ContrastiveFMParams

    def losses(self, batch: TrainBatch, prediction: torch.Tensor, state: StepState) -> dict[str, torch.Tensor]:
        negative = velocity_target(batch.x0, batch.noise).roll(1, dims=0)
        velocity = velocity_from_prediction(state.prediction, prediction.float(), state.x_t.float(), state.t.float())
        return {self.name: -self.params.weight * F.mse_loss(velocity, negative.float())}
