"""Contrastive flow matching: -lambda * MSE(implied velocity, velocity target rolled by one in the batch)."""

from __future__ import annotations

import pytest
import torch
from component_helpers import forward, make_batch, make_ctx

from speedrun.components import TrainBatch
from speedrun.components.contrastive_fm import ContrastiveFM, ContrastiveFMParams
from speedrun.protocol import StepState


def test_hand_example():
    # x0 = [0, 1], noise = [1, 1]: targets [1, 0], rolled [0, 1]; pred [0.5, 0.5]
    # MSE = (0.5^2 + 0.5^2) / 2 = 0.25, term = -0.05 * 0.25
    x0 = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)
    noise = torch.ones(2, 1, 1, 1)
    batch = TrainBatch(x0=x0, noise=noise, text=torch.zeros(2, 1, 1), text_mask=torch.ones(2, 1, dtype=torch.bool))
    pred = torch.full((2, 1, 1, 1), 0.5)
    state = StepState(x_t=torch.zeros(2, 1, 1, 1), t=torch.full((2,), 0.5))
    term = ContrastiveFM(ContrastiveFMParams()).losses(batch, pred, state)
    assert term.keys() == {"contrastive-fm"}
    assert term["contrastive-fm"].item() == pytest.approx(-0.0125)


def test_matches_the_dense_formula_and_pushes_gradients():
    ctx = make_ctx()
    batch, x_t, t = make_batch(ctx, b=3)
    pred, state = forward(ctx, [], batch, x_t, t)
    term = ContrastiveFM(ContrastiveFMParams(weight=0.2)).losses(batch, pred, state)["contrastive-fm"]
    target = batch.noise - batch.x0
    negative = torch.stack([target[2], target[0], target[1]])
    torch.testing.assert_close(term, -0.2 * (pred - negative).pow(2).mean())
    term.backward()
    assert ctx.model.final_linear.weight.grad.abs().sum() > 0


def test_an_x0_prediction_is_contrasted_as_the_velocity_it_implies():
    # Under x-prediction the output is x0_hat; the negative is a velocity, so the term compares
    # (x_t - x0_hat) / max(t, 0.05), the objective's own conversion (t = 0.01 takes the clamp).
    ctx = make_ctx()
    batch, x_t, _ = make_batch(ctx, b=3)
    t = torch.tensor([0.01, 0.5, 0.9])
    x0_hat = torch.randn_like(x_t)
    state = StepState(training=True, x_t=x_t, t=t, prediction="x0")
    term = ContrastiveFM(ContrastiveFMParams(weight=0.2)).losses(batch, x0_hat, state)["contrastive-fm"]
    implied = (x_t - x0_hat) / torch.tensor([0.05, 0.5, 0.9]).view(3, 1, 1, 1)
    target = batch.noise - batch.x0
    negative = torch.stack([target[2], target[0], target[1]])
    torch.testing.assert_close(term, -0.2 * (implied - negative).pow(2).mean())
