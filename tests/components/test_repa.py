"""REPA and iREPA: the loss equals its formula, gradients go where they should, teachers stay frozen."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from component_helpers import forward, make_batch, make_ctx

from speedrun.components import ComponentContext
from speedrun.components.irepa import IREPA, IREPAParams, representation_defaults, spatial_normalize
from speedrun.components.repa import REPA, REPAParams, negative_cosine, resolve_layer
from speedrun.errors import SpeedrunError
from speedrun.protocol import ContractError
from speedrun.tracks import load_track


def dense_teacher_tokens(teacher, images: torch.Tensor) -> torch.Tensor:
    """The teacher's patch tokens computed step by step: /255, bicubic, ImageNet, drop prefix tokens."""
    x = images.permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=teacher.input_size, mode="bicubic", align_corners=False).clamp(0, 1)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        return teacher.network.forward_features(x)[:, teacher.network.num_prefix_tokens :]


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def block_output(model, index: int):
    """Capture block ``index``'s output with a torch forward hook (independent of the component hooks)."""
    seen = {}
    handle = model.blocks[index].register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))
    return seen, handle


def test_negative_cosine_hand_example():
    pred = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    target = torch.tensor([[[3.0, 0.0], [1.0, 1.0]]])
    # cosines 1 and 1/sqrt(2): mean (1 + 0.70711) / 2
    assert negative_cosine(pred, target).item() == pytest.approx(-(1 + 1 / math.sqrt(2)) / 2)


def test_layer_defaults_scale_with_depth_and_bad_layers_are_named():
    assert [resolve_layer(None, d, "repa") for d in (16, 6, 2, 1)] == [8, 3, 1, 1]
    assert resolve_layer(2, 2, "repa") == 2
    with pytest.raises(SpeedrunError, match="component 'repa': layer 8 is outside the denoiser's blocks 1..6"):
        resolve_layer(8, 6, "repa")


def test_repa_loss_is_minus_lambda_mean_cosine_and_gradients_flow():
    ctx = make_ctx()
    repa = REPA(REPAParams(layer=2, weight=0.7, projector_dim=16, random_init_teacher=True))
    repa.setup(ctx)
    assert ctx.frozen["repa-teacher"] is repa.teacher and ctx.trainable["repa"] is repa.projector
    assert [type(m).__name__ for m in repa.projector] == ["Linear", "SiLU", "Linear", "SiLU", "Linear"]
    assert repa.projector[0].in_features == 64 and repa.projector[-1].out_features == 32
    batch, x_t, t = make_batch(ctx)
    seen, handle = block_output(ctx.model, 1)
    pred, state = forward(ctx, [repa], batch, x_t, t)
    handle.remove()
    loss = repa.losses(batch, pred, state)["repa"]
    y = dense_teacher_tokens(repa.teacher, batch.images_uint8)
    expected = -0.7 * cosine(repa.projector(seen["out"]), y).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert ctx.model.img_in.weight.grad.abs().sum() > 0
    assert ctx.model.blocks[1].mlp_up.weight.grad.abs().sum() > 0
    assert ctx.model.final_linear.weight.grad is None  # the loss reads block 2, not the output
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in repa.projector.parameters())
    assert all(p.grad is None and not p.requires_grad for p in repa.teacher.parameters())


def test_repa_stop_step_and_evaluation_record_nothing():
    ctx = make_ctx()
    repa = REPA(REPAParams(projector_dim=8, stop_step=3, random_init_teacher=True))
    repa.setup(ctx)
    batch, x_t, t = make_batch(ctx, b=2)
    _, state = forward(ctx, [repa], batch, x_t, t, step=2)
    assert "repa" in state.records
    pred, state = forward(ctx, [repa], batch, x_t, t, step=3)
    assert state.records == {} and repa.losses(batch, pred, state) == {}
    _, state = forward(ctx, [repa], batch, x_t, t, training=False)
    assert state.records == {}


def test_repa_refuses_tracks_without_train_images_at_setup():
    ctx = ComponentContext(
        model=SimpleNamespace(config=SimpleNamespace(depth=16, patch_size=2, hidden_size=8)),
        track=load_track("prx-256"),
        device=torch.device("cpu"),
        seed=0,
        token_grid=(16, 16),
        images_available=False,
    )
    with pytest.raises(ContractError, match="component 'repa' needs the real images"):
        REPA(REPAParams()).setup(ctx)
    with pytest.raises(ContractError, match="component 'irepa' needs the real images"):
        IREPA(IREPAParams()).setup(ctx)


def test_params_are_checked():
    with pytest.raises(ValueError):
        REPAParams(teacher="dinov4")
    with pytest.raises(ValueError):
        REPAParams(layer=0)
    with pytest.raises(ValueError):
        IREPAParams(alpha=1.5)


# ---------------------------------------------------------------- iREPA
def test_spatial_normalisation_hand_example():
    y = torch.tensor([[[1.0, 4.0], [3.0, 4.0]]])  # one image, two tokens, two channels
    # channel 0: minus 0.5 * mean 2 -> [0, 2], unbiased std sqrt(2); channel 1: [2, 2], std 0
    out = spatial_normalize(y, 0.5)
    torch.testing.assert_close(out, torch.tensor([[[0.0, 2 / 1e-6], [2 / (math.sqrt(2) + 1e-6), 2 / 1e-6]]]))


def test_irepa_defaults_follow_the_representation():
    assert representation_defaults("pixels") == (0.8, 0.5)
    assert representation_defaults("flux-vae") == (0.6, 1.0)
    ctx = make_ctx()
    irepa = IREPA(IREPAParams(random_init_teacher=True))
    irepa.setup(ctx)
    assert (irepa.alpha, irepa.weight) == (0.8, 0.5)
    explicit = IREPA(IREPAParams(random_init_teacher=True, alpha=0.3, weight=2.0))
    explicit.setup(make_ctx())
    assert (explicit.alpha, explicit.weight) == (0.3, 2.0)


def test_irepa_loss_is_conv_projection_against_normalised_teacher():
    ctx = make_ctx()
    irepa = IREPA(IREPAParams(layer=1, alpha=0.6, weight=1.3, random_init_teacher=True))
    irepa.setup(ctx)
    conv = irepa.projector
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (3, 3) and conv.padding == (1, 1)
    batch, x_t, t = make_batch(ctx)
    seen, handle = block_output(ctx.model, 0)
    pred, state = forward(ctx, [irepa], batch, x_t, t)
    handle.remove()
    loss = irepa.losses(batch, pred, state)["irepa"]
    h = seen["out"]  # (B, 64, hidden) row-major over the 8 x 8 grid
    grid = h.reshape(3, 8, 8, -1).permute(0, 3, 1, 2)
    proj = conv(grid).permute(0, 2, 3, 1).reshape(3, 64, -1)
    y = dense_teacher_tokens(irepa.teacher, batch.images_uint8)
    y = y - 0.6 * y.mean(dim=1, keepdim=True)
    y = y / (y.std(dim=1, keepdim=True) + 1e-6)
    torch.testing.assert_close(loss, -1.3 * cosine(proj, y).mean(), rtol=1e-5, atol=1e-6)
    loss.backward()
    assert ctx.model.img_in.weight.grad.abs().sum() > 0 and conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in irepa.teacher.parameters())
