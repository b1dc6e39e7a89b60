"""The Flux VAE wrapper, on a small random-init AutoencoderKL."""

from __future__ import annotations

import pytest
import torch
from vae_helpers import random_init_vae

from speedrun.data.loader import from_uint8
from speedrun.data.vae import FLUX_VAE_REF, load_flux_vae, parse_ref
from speedrun.errors import SpeedrunError


def test_encode_normalises_and_decode_inverts(rng):
    vae = random_init_vae()
    images = torch.from_numpy(rng.integers(0, 256, (3, 32, 32, 3), dtype="uint8"))
    latents = vae.encode(images)
    assert latents.shape == (3, 16, 4, 4) and vae.latent_shape(32) == (16, 4, 4)
    with torch.no_grad():
        mean = vae.model.encode(from_uint8(images)).latent_dist.mean
    assert torch.allclose(latents, (mean - 0.1159) * 0.3611, atol=1e-6)
    decoded = vae.decode(latents)
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 32, 32, 3)
    with torch.no_grad():
        direct = vae.model.decode(mean).sample
    expected = ((direct + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    assert (decoded.int() - expected.int()).abs().max() <= 1


def test_parse_ref():
    assert parse_ref("black-forest-labs/FLUX.1-schnell@main#vae") == ("black-forest-labs/FLUX.1-schnell", "main", "vae")
    assert parse_ref("org/repo") == ("org/repo", "main", None)
    with pytest.raises(SpeedrunError, match="not a Hugging Face reference"):
        parse_ref("flux")


def test_missing_weights_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SpeedrunError) as error:
        load_flux_vae(FLUX_VAE_REF, weights_dir=tmp_path)
    message = str(error.value)
    assert "black-forest-labs/FLUX.1-schnell/vae" in message and parse_ref(FLUX_VAE_REF)[1] in message
    assert "SPEEDRUN_WEIGHTS_DIR" in message


def test_loads_a_local_copy(tmp_path, rng):
    source = random_init_vae(seed=3)
    source.model.save_pretrained(tmp_path / "black-forest-labs" / "FLUX.1-schnell" / "vae")
    vae = load_flux_vae(FLUX_VAE_REF, weights_dir=tmp_path)
    assert (vae.id, vae.revision) == ("black-forest-labs/FLUX.1-schnell#vae", parse_ref(FLUX_VAE_REF)[1])
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype="uint8")
    assert torch.equal(vae.encode(images), source.encode(images))
