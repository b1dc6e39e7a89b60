"""The Flux VAE (diffusers ``AutoencoderKL``): uint8 images <-> model-space latents
``(z - shift_factor) * scaling_factor``, ``z`` the posterior mean (deterministic, so prepared data is
reproducible). The factors come from the VAE's own config (Flux: shift 0.1159, scale 0.3611)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from speedrun.data.loader import from_uint8, to_uint8
from speedrun.data.text import find_local_weights, missing_weights_error
from speedrun.errors import SpeedrunError

# A commit of FLUX.1-schnell whose vae/ folder holds the diffusers config and weights.
FLUX_VAE_REF = "black-forest-labs/FLUX.1-schnell@f1e6c9fa059429dceee1c6b43b4446cfbe8fd8f4#vae"
FLUX_LATENT_CHANNELS, FLUX_DOWNSAMPLE = 16, 8  # known before the VAE loads (shard sizes, FLOP counts)


def parse_ref(ref: str) -> tuple[str, str, str | None]:
    """``"repo@revision#subfolder"`` -> (repo, revision, subfolder); revision defaults to main."""
    rest, _, subfolder = ref.partition("#")
    repo, _, revision = rest.partition("@")
    if not repo or "/" not in repo:
        raise SpeedrunError(f"'{ref}' is not a Hugging Face reference of the form owner/name@revision#subfolder")
    return repo, revision or "main", subfolder or None


class FluxVAE:
    """An ``AutoencoderKL`` plus its latent normalisation; ``id``/``revision`` name the weights."""

    batch_size = 16  # images per forward pass

    def __init__(self, model: torch.nn.Module, id: str, revision: str, device: str | torch.device = "cpu") -> None:
        self.model = model.eval().requires_grad_(False).to(device)
        self.id, self.revision = id, revision
        self.device = torch.device(device)
        config = model.config
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(config.shift_factor or 0.0)
        self.latent_channels = int(config.latent_channels)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """(C, h, w) of the latents of an image_size x image_size image."""
        side = image_size // self.downsample
        return self.latent_channels, side, side

    def encode(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 images (B, H, W, 3) -> float32 model-space latents (B, C, H/8, W/8) on the CPU."""
        images = torch.as_tensor(images)
        out = []
        dtype = next(self.model.parameters()).dtype
        for start in range(0, len(images), self.batch_size):
            x = from_uint8(images[start : start + self.batch_size].to(self.device)).to(dtype)
            with torch.inference_mode():
                z = self.model.encode(x).latent_dist.mean
            out.append(((z.float() - self.shift_factor) * self.scaling_factor).cpu())
        return torch.cat(out)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-space latents (B, C, h, w) -> uint8 images (B, 8h, 8w, 3) on the CPU."""
        out = []
        dtype = next(self.model.parameters()).dtype
        for start in range(0, len(latents), self.batch_size):
            z = latents[start : start + self.batch_size].to(self.device).float()
            z = z / self.scaling_factor + self.shift_factor
            with torch.inference_mode():
                x = self.model.decode(z.to(dtype)).sample
            out.append(to_uint8(x).cpu())
        return torch.cat(out)


def load_flux_vae(
    ref: str = FLUX_VAE_REF, device: str | torch.device = "cpu", weights_dir: str | Path | None = None
) -> FluxVAE:
    """The VAE named by ``ref`` (``repo@revision#subfolder``), from a local copy or the HF cache."""
    from diffusers import AutoencoderKL

    repo, revision, subfolder = parse_ref(ref)
    local = find_local_weights(repo, subfolder, weights_dir)
    where = {} if local else {"subfolder": subfolder, "revision": revision}
    try:
        model = AutoencoderKL.from_pretrained(local or repo, torch_dtype=torch.float32, **where)
    except (OSError, ValueError) as exc:
        raise missing_weights_error(repo, revision, subfolder, exc) from None
    return FluxVAE(model, repo + (f"#{subfolder}" if subfolder else ""), revision, device)
