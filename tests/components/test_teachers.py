"""Frozen teachers: patch tokens on the denoiser's grid, pinned weights or a clear error, the smoke policy."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from speedrun.components import ComponentContext
from speedrun.components.teachers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RANDOM_INIT_ARCH,
    TEACHERS,
    build_network,
    load_teacher,
    teacher_for,
    weights_file,
)
from speedrun.errors import SpeedrunError
from speedrun.protocol import ContractError
from speedrun.tracks import load_track


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """An empty weights dir and an empty Hugging Face cache (offline, see tests/conftest.py)."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("SPEEDRUN_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "weights"


@pytest.mark.parametrize("name", sorted(TEACHERS))
def test_random_init_teacher_gives_patch_tokens_on_the_grid(name):
    before = torch.get_rng_state()
    teacher = load_teacher(name, (3, 4), random_init=True)
    assert torch.equal(torch.get_rng_state(), before)  # built from its own seed
    images = torch.randint(0, 256, (2, 20, 24, 3), dtype=torch.uint8)
    tokens = teacher(images)
    spec = TEACHERS[name]
    assert teacher.input_size == (3 * spec.patch, 4 * spec.patch)
    assert tokens.shape == (2, 12, RANDOM_INIT_ARCH["embed_dim"]) and not tokens.requires_grad
    assert teacher.network.num_prefix_tokens == (1 if name == "dinov2-vitb14" else 5)  # CLS (+ 4 registers) dropped
    again = load_teacher(name, (3, 4), random_init=True)
    torch.testing.assert_close(again(images), tokens, rtol=0, atol=0)
    assert teacher.id.startswith(f"random-init:{spec.timm_name}")


def test_preprocessing_is_div255_bicubic_imagenet():
    teacher = load_teacher("dinov2-vitb14", (2, 2), random_init=True)
    images = torch.randint(0, 256, (1, 8, 8, 3), dtype=torch.uint8)
    x = images.permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(28, 28), mode="bicubic", align_corners=False).clamp(0, 1)
    expected = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(teacher.preprocess(images), expected)
    tokens = teacher.network.forward_features(expected)[:, 1:]
    torch.testing.assert_close(teacher(images), tokens)


def test_missing_weights_name_the_hub_id_and_the_remedy(no_weights):
    with pytest.raises(SpeedrunError) as info:
        weights_file(TEACHERS["dinov3-vitl16"])
    msg = str(info.value)
    for part in (
        "vit_large_patch16_dinov3.lvd1689m",
        "timm/vit_large_patch16_dinov3.lvd1689m",
        "$SPEEDRUN_WEIGHTS_DIR",
        "HF_HUB_OFFLINE",
        "DINOv3 licence",
    ):
        assert part in msg, (part, msg)


def test_weights_dir_is_used_and_position_embeddings_are_resampled(no_weights):
    """A file in $SPEEDRUN_WEIGHTS_DIR/<timm name>/ is found and loaded by timm at the grid's size."""
    spec = TEACHERS["dinov2-vitl14-reg"]
    torch.manual_seed(0)
    source = build_network(spec, (518, 518), None, RANDOM_INIT_ARCH)  # pretrained at 518 like DINOv2
    folder = no_weights / spec.timm_name
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(folder / "model.safetensors"))
    assert weights_file(spec) == folder / "model.safetensors"
    loaded = build_network(spec, (112, 112), weights_file(spec), RANDOM_INIT_ARCH)
    torch.testing.assert_close(loaded.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    assert loaded.pos_embed.shape[1] == 8 * 8  # resampled from 37 x 37 (registers and CLS carry none)


def _ctx(track_id: str, patch: int = 4, images: bool | None = None) -> ComponentContext:
    """A setup context as the trainer builds it (Flux-VAE latents are 1/8 of the image side)."""
    track = load_track(track_id)
    side = track.data.image_size // (1 if track.data.representation == "pixels" else 8) // patch
    return ComponentContext(
        model=SimpleNamespace(config=SimpleNamespace(patch_size=patch, depth=16, hidden_size=8)),
        track=track,
        device=torch.device("cpu"),
        seed=0,
        token_grid=(side, side),
        images_available=track.data.representation == "pixels" or track.data.train_images if images is None else images,
    )


def test_teachers_need_the_real_train_images():
    """A latent track that keeps no train images is refused with the reason; prx-256 keeps them, and
    its 256-pixel images meet DINOv2/14 at 224 pixels on the 16 x 16 token grid."""
    without = _ctx("prx-256", patch=2, images=False)
    reason = r"'repa' needs the real images.*'prx-256' trains on 'flux-vae' latents.*data.train_images = false"
    with pytest.raises(ContractError, match=reason):
        teacher_for(without, "repa", "dinov2-vitl14-reg", random_init=True)
    assert not without.uses_images
    ctx = _ctx("prx-256", patch=2)
    teacher = teacher_for(ctx, "repa", "dinov2-vitl14-reg", random_init=True)
    assert ctx.uses_images and teacher.grid == (16, 16) and teacher.input_size == (224, 224)
    assert teacher(torch.zeros(1, 256, 256, 3, dtype=torch.uint8)).shape == (1, 256, RANDOM_INIT_ARCH["embed_dim"])


def test_smoke_policy_random_init_with_a_note_and_real_tracks_fail(no_weights, capsys):
    teacher = teacher_for(_ctx("smoke"), "repa", "dinov2-vitl14-reg", random_init=False)
    assert teacher.id.startswith("random-init:") and teacher.grid == (8, 8)
    assert "track 'smoke' uses random-init networks" in capsys.readouterr().err
    with pytest.raises(SpeedrunError, match="teacher weights unavailable"):
        teacher_for(_ctx("tiny"), "repa", "dinov2-vitl14-reg", random_init=False)
    assert teacher_for(_ctx("tiny"), "repa", "dinov2-vitb14", random_init=True).id.startswith("random-init:")
    assert "random_init_teacher = true" in capsys.readouterr().err
