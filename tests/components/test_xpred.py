"""x-prediction: the objective's loss is MSE in velocity space, and checkpoints say prediction "x0"."""

from __future__ import annotations

import json

import pytest
import torch
from component_helpers import make_ctx, train

from speedrun.components.xpred import EVAL_T_CLAMP, XPrediction, XPredObjective, XPredParams
from speedrun.flow import RectifiedFlowObjective, velocity_from_prediction
from speedrun.protocol import replacing_objective
from speedrun.tracks import load_track


def test_hand_example():
    # x0 = [1, 2], noise = [3, -1], t = [0.5, 0.01] -> x_t = [2, 1.97], v = [2, -3]
    # x0_hat = [1.5, 2] -> v_hat = [(2 - 1.5) / 0.5, (1.97 - 2) / 0.05] = [1, -0.6]
    # MSE = ((1 - 2)^2 + (-0.6 + 3)^2) / 2 = 3.38
    objective = XPredObjective(load_track("smoke").train.timesteps)
    assert objective.prediction == "x0"
    x0, noise, t = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0]), torch.tensor([0.5, 0.01])
    x_t, target = objective.input_and_target(x0, noise, t)
    torch.testing.assert_close(x_t, torch.tensor([2.0, 1.97]))
    torch.testing.assert_close(target, torch.tensor([2.0, -3.0]))
    loss = objective.loss(torch.tensor([1.5, 2.0]), target, x_t, t)
    assert loss.item() == pytest.approx(3.38, rel=1e-5)


def test_same_input_and_times_as_rectified_flow_and_evaluator_conversion():
    spec = load_track("smoke").train.timesteps
    rf, xp = RectifiedFlowObjective(spec), XPredObjective(spec)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(rf.sample_t(16, g1, "cpu"), xp.sample_t(16, g2, "cpu"))
    x0, noise, t = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.rand(4)
    assert torch.equal(rf.input_and_target(x0, noise, t)[0], xp.input_and_target(x0, noise, t)[0])
    pred = torch.randn_like(x0)
    torch.testing.assert_close(xp.velocity(pred, x0, t), velocity_from_prediction("x0", pred, x0, t))


def test_component_replaces_the_objective_and_refuses_another_clamp():
    comp = XPrediction(XPredParams())
    comp.setup(make_ctx())
    chosen = replacing_objective([comp])
    assert isinstance(chosen, XPredObjective) and chosen.t_clamp == 0.05
    with pytest.raises(ValueError, match="evaluator converts x0 predictions with t_clamp = 0.05"):
        XPredParams(t_clamp=0.1)


def test_checkpoint_meta_says_x0(smoke_data_root, tmp_path, short_smoke):
    trainer, summary = train(short_smoke, smoke_data_root, tmp_path / "run", components=[XPrediction(XPredParams())])
    assert summary.status == "ok"
    meta = json.loads((tmp_path / "run" / "checkpoints" / "step-00000002" / "meta.json").read_text())
    assert meta["prediction"] == "x0" and meta["component_keys"] == []
    assert isinstance(trainer.objective, XPredObjective)


def test_a_t_clamp_other_than_the_evaluators_is_refused():
    """The evaluator converts x0 predictions with its own t_clamp and records none: training with another value
    would score a conversion it never trained."""
    from pydantic import ValidationError

    assert XPredParams.model_validate({"t_clamp": EVAL_T_CLAMP}).t_clamp == EVAL_T_CLAMP
    with pytest.raises(ValidationError, match=f"the evaluator converts x0 predictions with t_clamp = {EVAL_T_CLAMP}"):
        XPredParams.model_validate({"t_clamp": EVAL_T_CLAMP / 2})
