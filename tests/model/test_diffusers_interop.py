"""Weights map one to one between PRXDenoiser and diffusers' PRXTransformer2DModel."""

import pytest
import torch

from speedrun.errors import SpeedrunError
from speedrun.model import PRXDenoiser
from speedrun.model.diffusers_interop import (
    config_from_diffusers,
    from_diffusers_state_dict,
    load_diffusers_prx,
    save_diffusers_prx,
    to_diffusers_state_dict,
)

prx = pytest.importorskip("diffusers.models.transformers.transformer_prx")

TINY = dict(in_channels=4, patch_size=2, context_in_dim=24, hidden_size=32, mlp_ratio=3.5, num_heads=2, depth=2)


def random_diffusers(seed=0, **overrides):
    torch.manual_seed(seed)
    model = prx.PRXTransformer2DModel(**{**TINY, "axes_dim": [8, 8], **overrides}).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # diffusers zero-initialises the modulations: randomise everything
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def inputs(seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 12, generator=gen)
    t = torch.rand(2, generator=gen)
    text = torch.randn(2, 5, 24, generator=gen)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    return x, t, text, mask


def ours_from(diffusers_model) -> PRXDenoiser:
    model = PRXDenoiser(config_from_diffusers(diffusers_model.config)).eval()
    model.load_state_dict(from_diffusers_state_dict(diffusers_model.state_dict()), strict=True)
    return model


@pytest.mark.parametrize("overrides", [{}, {"bottleneck_size": 12}])
def test_same_outputs_as_diffusers(overrides):
    reference = random_diffusers(**overrides)
    ours = ours_from(reference)
    x, t, text, mask = inputs()
    with torch.no_grad():
        expected = reference(x, t, text, attention_mask=mask, return_dict=False)[0]
        got = ours(x, t, text, mask)
    assert expected.abs().mean() > 0.1  # a meaningful comparison, not two zero tensors
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_state_dict_round_trip_is_exact():
    sd = random_diffusers().state_dict()
    back = to_diffusers_state_dict(from_diffusers_state_dict(sd))
    assert list(back) == list(sd)
    for key in sd:
        assert back[key] is sd[key]


def test_save_and_load_directory(tmp_path):
    reference = random_diffusers(seed=3)
    ours = ours_from(reference)
    save_diffusers_prx(ours, tmp_path / "prx")
    loaded = load_diffusers_prx(tmp_path / "prx").eval()
    assert loaded.config == ours.config
    x, t, text, mask = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, text, mask), ours(x, t, text, mask), atol=0, rtol=0)
    from_model = load_diffusers_prx(reference)
    for key, value in ours.state_dict().items():
        assert torch.equal(from_model.state_dict()[key], value)


def test_unsupported_features_are_errors(tmp_path):
    with pytest.raises(SpeedrunError, match="resolution_embeds"):
        config_from_diffusers({**TINY, "axes_dim": [8, 8], "resolution_embeds": True})
    with pytest.raises(SpeedrunError, match="axes_dim"):
        config_from_diffusers({**TINY, "axes_dim": [4, 12]})
    with pytest.raises(SpeedrunError, match="no PRXDenoiser counterpart"):
        from_diffusers_state_dict({"resolution_embedder.mlp.in_layer.weight": torch.zeros(1)})
    with pytest.raises(SpeedrunError, match="config.json"):
        load_diffusers_prx(tmp_path)
