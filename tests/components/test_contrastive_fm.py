"""Contrastive flow matching: -lambda * MSE(pred, velocity target rolled by one in the batch)."""

from __future__ import annotations

import pytest
import torch
from component_helpers import forward, make_batch, make_ctx

from speedrun.components import TrainBatch
from speedrun.components.contrastive_fm import ContrastiveFM, ContrastiveFMParams


def test_hand_example():
    # x0 = [0, 1], noise = [1, 1]: targets [1, 0], rolled [0, 1]; pred [0.5, 0.5]
    # MSE = (0.5^2 + 0.5^2) / 2 = 0.25, term = -0.05 * 0.25
    x0 = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)
    noise = torch.ones(2, 1, 1, 1)
    batch = TrainBatch(x0=x0, noise=noise, text=torch.zeros(2, 1, 1), text_mask=torch.ones(2, 1, dtype=torch.bool))
    pred = torch.full((2, 1, 1, 1), 0.5)
    term = ContrastiveFM(ContrastiveFMParams()).losses(batch, pred, None)
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
