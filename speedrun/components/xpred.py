"""x-prediction: the network outputs the clean sample ``x0_hat``; the loss compares its velocity
``(x_t - x0_hat) / max(t, t_clamp)`` with ``noise - x0`` by MSE (JiT-style; PRX part 3). The evaluator
converts with ``speedrun.flow.velocity_from_prediction``, whose ``t_clamp`` must be ours (unrecorded)."""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from speedrun.flow import Objective, RectifiedFlowObjective, velocity_from_prediction
from speedrun.protocol import Component, ComponentContext, Params, PredictionKind
from speedrun.tracks import TimestepSpec

EVAL_T_CLAMP: float = inspect.signature(velocity_from_prediction).parameters["t_clamp"].default


class XPredParams(Params):
    t_clamp: float = Field(EVAL_T_CLAMP, gt=0, lt=1, description="Lower clamp of t in the x0 -> velocity conversion.")

    @field_validator("t_clamp")
    def _matches_evaluator(cls, v: float) -> float:
        if v != EVAL_T_CLAMP:
            raise ValueError(f"the evaluator converts x0 predictions with t_clamp = {EVAL_T_CLAMP}; another value "
                             "would train one conversion and sample with another")  # fmt: skip
        return v


class XPredObjective(RectifiedFlowObjective):
    """The rectified flow's times and ``(x_t, v)``; only the output's meaning and the loss change."""

    prediction: PredictionKind = "x0"
    t_clamp: float = EVAL_T_CLAMP

    def velocity(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return velocity_from_prediction("x0", pred, x_t, t, self.t_clamp)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.velocity(pred.float(), x_t.float(), t.float()), target.float())


class XPrediction(Component):
    """Replaces the objective with :class:`XPredObjective` on the track's timestep distribution."""

    name = "xpred"
    Params = XPredParams
    params: XPredParams

    def setup(self, ctx: ComponentContext) -> None:
        self.timesteps: TimestepSpec = ctx.track.train.timesteps

    def objective(self) -> Objective:
        return XPredObjective(self.timesteps)
