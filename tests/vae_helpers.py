"""A Flux-shaped VAE small enough for CPU tests (tests/ is on sys.path through its conftest)."""

from __future__ import annotations

from typing import Any

import torch

from speedrun.data.vae import FluxVAE
from speedrun.tracks import canonical_hash

# 16 latent channels, 8x downsampling and Flux's factors, in 8-wide blocks.
SMALL_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": [8, 8, 8, 8],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1, "norm_num_groups": 4, "scaling_factor": 0.3611, "shift_factor": 0.1159,
    "use_quant_conv": False, "use_post_quant_conv": False,
}  # fmt: skip


def random_init_vae(config: dict[str, Any] | None = None, device: str | torch.device = "cpu", seed: int = 0) -> FluxVAE:
    """A randomly initialised ``AutoencoderKL`` (default ``SMALL_VAE_CONFIG``)."""
    from diffusers import AutoencoderKL

    config = dict(SMALL_VAE_CONFIG if config is None else config)
    torch.manual_seed(seed)
    model = AutoencoderKL(**config)
    return FluxVAE(model, "random-init:AutoencoderKL", f"config-{canonical_hash(config)[:16]}-seed{seed}", device)
