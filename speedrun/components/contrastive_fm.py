"""Contrastive flow matching: push each prediction away from another sample's target.

Loss term ``contrastive_fm = -weight * MSE(pred, roll(target, 1, batch axis))`` where ``target`` is the
rectified-flow velocity ``noise - x0`` of the batch (recomputed from ``TrainBatch.noise`` and
``x0``): sample ``i`` is contrasted with the target of sample ``i - 1`` (the last with the first's
neighbour, cyclically). Added to the objective's MSE it gives Stoica et al.'s
``|v - v_i|^2 - lambda |v - v_j|^2``; lambda 0.05 as in PRX part 2.

The rolled target is a velocity, so the prediction is compared as the velocity it implies
(``StepState.prediction``): under x-prediction, ``(x_t - x0_hat) / max(t, 0.05)`` as in that
objective's own loss. With a local batch of one sample the "negative" is the sample's own target;
the term then only rescales the MSE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from speedrun.components.base import Component, Params, TrainBatch
from speedrun.flow import velocity_from_prediction, velocity_target
from speedrun.state import StepState


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
