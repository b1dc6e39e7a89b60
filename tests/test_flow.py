"""Rectified flow: formulas, timestep distribution, Euler sampler, CFG, caption dropout, validation loss."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from speedrun.flow import (
    RectifiedFlowObjective,
    apply_caption_dropout,
    caption_drop_mask,
    euler_sample,
    interpolate,
    sample_timesteps,
    validation_loss,
    validation_loss_per_sample,
    velocity_from_prediction,
    velocity_target,
)
from speedrun.tracks import TimestepSpec


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_interpolation_and_target():
    x0, noise = torch.randn(3, 2, 4, 4, generator=gen(0)), torch.randn(3, 2, 4, 4, generator=gen(1))
    t = torch.tensor([0.0, 0.25, 1.0])
    x_t = interpolate(x0, noise, t)
    torch.testing.assert_close(x_t[0], x0[0])
    torch.testing.assert_close(x_t[1], 0.75 * x0[1] + 0.25 * noise[1])
    torch.testing.assert_close(x_t[2], noise[2])
    torch.testing.assert_close(velocity_target(x0, noise), noise - x0)
    # the target is the time derivative of the path
    eps = 1e-3
    deriv = (interpolate(x0, noise, t + eps) - interpolate(x0, noise, t - eps)) / (2 * eps)
    torch.testing.assert_close(deriv, velocity_target(x0, noise), atol=1e-3, rtol=0)


def test_objective_and_x0_conversion():
    objective = RectifiedFlowObjective(TimestepSpec())
    assert objective.prediction == "velocity"
    x0, noise = torch.randn(4, 3, 2, 2, generator=gen(0)), torch.randn(4, 3, 2, 2, generator=gen(1))
    t = torch.tensor([0.01, 0.3, 0.6, 0.9])
    x_t, target = objective.input_and_target(x0, noise, t)
    assert objective.loss(target, target, x_t, t).item() == 0.0
    assert objective.loss(target + 2.0, target, x_t, t).item() == pytest.approx(4.0)
    assert objective.velocity(target, x_t, t) is target
    # an exact x0 prediction converts to the exact velocity wherever t >= the clamp
    v = velocity_from_prediction("x0", x0, x_t, t)
    torch.testing.assert_close(v[1:], target[1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v[0], (x_t[0] - x0[0]) / 0.05)  # t = 0.01 is clamped to 0.05
    with pytest.raises(ValueError, match="prediction kind"):
        velocity_from_prediction("eps", x0, x_t, t)


def test_timestep_clamp_bounds():
    spec = TimestepSpec(std=3.0, t_min=0.2, t_max=0.8, uniform_fraction=0.0)
    t = sample_timesteps(20_000, spec, gen(0))
    assert t.dtype == torch.float32 and t.shape == (20_000,)
    assert t.min().item() == pytest.approx(0.2) and (t >= np.float32(0.2)).all()
    assert (t < 0.8).all() and t.max().item() == pytest.approx(0.8, abs=1e-6)
    full = sample_timesteps(20_000, TimestepSpec(std=8.0), gen(1))
    assert (full < 1.0).all() and (full >= np.float32(1e-3)).all()


def test_timestep_distribution_is_the_logit_normal_uniform_mixture():
    spec = TimestepSpec(mean=0.3, std=1.2, uniform_fraction=0.1, t_min=0.0, t_max=1.0)
    t = sample_timesteps(50_000, spec, gen(2)).double().numpy()

    def cdf(x):
        logit = np.log(x) - np.log1p(-x)
        return 0.9 * stats.norm.cdf(logit, loc=0.3, scale=1.2) + 0.1 * x

    assert stats.kstest(t, cdf).pvalue > 1e-3
    # a plain logit-normal (no uniform part) is clearly rejected at this sample size
    assert stats.kstest(t, lambda x: stats.norm.cdf(np.log(x) - np.log1p(-x), 0.3, 1.2)).pvalue < 1e-3


def test_uniform_fraction_is_decided_per_draw():
    # a near-degenerate logit-normal at t = 0.5 makes the uniform draws easy to count
    spec = TimestepSpec(std=1e-4, uniform_fraction=0.1)
    t = sample_timesteps(40_000, spec, gen(3))
    off_peak = ((t - 0.5).abs() > 0.01).float().mean().item()
    assert off_peak == pytest.approx(0.1 * 0.98, abs=0.01)


def test_shift_formula():
    shift = 3.0
    spec = TimestepSpec(shift=shift, uniform_fraction=0.0, t_min=0.0)
    shifted = sample_timesteps(20_000, spec, gen(4)).double()
    plain = sample_timesteps(20_000, TimestepSpec(uniform_fraction=0.0, t_min=0.0), gen(4)).double()
    torch.testing.assert_close(shifted, shift * plain / (1 + (shift - 1) * plain), atol=1e-6, rtol=0)
    assert shifted.mean() > plain.mean() + 0.1  # s > 1 moves mass towards noise


def test_caption_dropout_replaces_whole_captions():
    text = torch.randn(2000, 3, 4, generator=gen(0))
    mask = torch.ones(2000, 3, dtype=torch.bool)
    null_text, null_mask = torch.full((3, 4), 7.0), torch.tensor([True, False, False])
    out_text, out_mask = apply_caption_dropout(text, mask, null_text, null_mask, caption_drop_mask(2000, 0.1, gen(1)))
    dropped = (out_text == 7.0).all(dim=(1, 2))
    kept = (out_text == text).all(dim=(1, 2))
    assert bool((dropped | kept).all())
    assert dropped.float().mean().item() == pytest.approx(0.1, abs=0.025)
    assert bool((out_mask[dropped] == null_mask).all()) and bool(out_mask[kept].all())
    unchanged, _ = apply_caption_dropout(text, mask, null_text, null_mask, caption_drop_mask(2000, 0.0, gen(1)))
    assert torch.equal(unchanged, text)


def exact_field(target_of_text):
    """The true velocity of straight paths ending at x0 = target(text): v(x, t) = (x - x0) / t."""

    def model_fn(x, t, text, mask):
        x0 = target_of_text(text)
        return (x - x0) / t.reshape(-1, 1, 1, 1)

    return model_fn


def test_euler_recovers_x0_of_an_analytic_field():
    noise = torch.randn(3, 2, 4, 4, generator=gen(0))
    text = torch.randn(3, 5, 8, generator=gen(1))
    mask = torch.ones(3, 5, dtype=torch.bool)
    target = lambda txt: txt.mean(dim=(1, 2)).reshape(-1, 1, 1, 1).expand(-1, 2, 4, 4)  # noqa: E731
    for steps in (1, 7):
        x0 = euler_sample(exact_field(target), noise, text, mask, torch.zeros(5, 8), torch.ones(5).bool(), steps, 1.0)
        torch.testing.assert_close(x0, target(text), atol=1e-5, rtol=1e-5)


def test_cfg_combines_conditional_and_unconditional_in_one_batch():
    noise = torch.randn(2, 1, 2, 2, generator=gen(0))
    text = torch.randn(2, 3, 4, generator=gen(1))
    mask = torch.ones(2, 3, dtype=torch.bool)
    null_text, null_mask = torch.zeros(1, 3, 4), torch.ones(1, 3, dtype=torch.bool)
    batches = []

    def model_fn(x, t, txt, m):
        batches.append(x.shape[0])
        return x * 0 + txt.mean(dim=(1, 2)).reshape(-1, 1, 1, 1) + t.reshape(-1, 1, 1, 1)

    steps = 4
    cond_only = euler_sample(model_fn, noise, text, mask, null_text, null_mask, steps, 1.0)
    assert batches == [2] * steps
    # v_cond = t + c and v_uncond = t (the empty caption embeds to 0), so guided v = t + s c; Euler steps of
    # -1/steps evaluated at t = 1, 1 - 1/steps, ... move x by -(t_sum + s c)
    c = text.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
    t_sum = sum(1 - i / steps for i in range(steps)) / steps
    torch.testing.assert_close(cond_only, noise - t_sum - c)
    batches.clear()
    guided = euler_sample(model_fn, noise, text, mask, null_text, null_mask, steps, 3.0)
    assert batches == [4] * steps
    torch.testing.assert_close(guided, noise - t_sum - 3.0 * c)


def test_validation_loss_is_independent_of_batching():
    x0 = torch.randn(7, 2, 4, 4, generator=gen(0))
    text = torch.randn(7, 3, 4, generator=gen(1))
    mask = torch.ones(7, 3, dtype=torch.bool)

    def model_fn(x, t, txt, m):  # an imperfect, sample-wise model
        return torch.tanh(x) * (1 + t.reshape(-1, 1, 1, 1)) + txt.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)

    whole = validation_loss(model_fn, x0, text, mask, timesteps=8, seed=5)
    assert validation_loss(model_fn, x0, text, mask, timesteps=8, seed=5, batch_size=3) == whole
    assert validation_loss(model_fn, x0, text, mask, timesteps=8, seed=5, batch_size=1) == whole
    assert len(whole["per_t"]) == 8
    assert whole["overall"] == pytest.approx(sum(whole["per_t"]) / 8, rel=1e-12)
    assert validation_loss(model_fn, x0, text, mask, timesteps=8, seed=6)["overall"] != whole["overall"]


def test_validation_loss_of_the_exact_velocity_is_zero_and_times_are_midpoints():
    x0 = torch.randn(4, 1, 2, 2, generator=gen(0))
    seen_t = []

    def oracle(x, t, txt, m):  # knows x0, so v = (x_t - x0) / t exactly
        seen_t.append(t[0].item())
        return (x - x0[: x.shape[0]]) / t.reshape(-1, 1, 1, 1)

    result = validation_loss(oracle, x0, torch.zeros(4, 1, 1), torch.ones(4, 1).bool(), timesteps=4)
    assert result["overall"] == pytest.approx(0.0, abs=1e-10)
    assert seen_t == pytest.approx([0.125, 0.375, 0.625, 0.875])
    rows = validation_loss_per_sample(oracle, x0, torch.zeros(4, 1, 1), torch.ones(4, 1).bool(), timesteps=4)
    assert rows.shape == (4, 4) and rows.dtype == torch.float64
    assert math.isclose(rows.max().item(), 0.0, abs_tol=1e-10)


def test_validation_loss_of_a_denoiser_barely_depends_on_batching():
    from speedrun.model import build_model

    torch.manual_seed(0)
    model = build_model("smoke").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen(9)) * 0.05)
    x0 = torch.randn(5, 3, 8, 8, generator=gen(0))
    text = torch.randn(5, 4, 384, generator=gen(1))
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[1, 2:] = False
    whole = validation_loss(model, x0, text, mask, timesteps=2, seed=1)
    split = validation_loss(model, x0, text, mask, timesteps=2, seed=1, batch_size=2)
    # only the model's own batch-size-dependent float rounding may differ
    assert split["per_t"] == pytest.approx(whole["per_t"], rel=1e-6)
