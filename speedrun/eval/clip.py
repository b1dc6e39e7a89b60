"""CMMD features: CLIP ViT-L/14@336 ``image_embeds`` (pinned revision), L2-normalised in float64 (768-d),
of the centre square, bicubic-resized to 336 x 336 on float pixels, /255, CLIP mean/std."""

from __future__ import annotations

import torch

from speedrun.eval.features import NetworkExtractor, resize_bicubic
from speedrun.eval.weights import resolve_hub_weights

HUB_ID = "openai/clip-vit-large-patch14-336"
REVISION = "ce19dc912ca5cd21c8a653c79e251e808ccabcd1"
FILES = ("config.json", "pytorch_model.bin")
LOCAL_NAME = "clip-vit-large-patch14-336"
SIZE = 336
DIM = 768
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSING = "crop-bicubic336-clipnorm-v1"
RANDOM_INIT = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "projection_dim": 32
}


class ClipExtractor(NetworkExtractor):
    """``random_init``: a 2-layer, 32-wide random CLIP vision tower (32-d), same preprocessing."""

    preprocessing, mean, std = PREPROCESSING, MEAN, STD

    def random_network(self) -> tuple[torch.nn.Module, str, int]:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection  # heavy: on demand

        network = CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=SIZE, patch_size=14, **RANDOM_INIT))
        shape = f"h{RANDOM_INIT['hidden_size']}-l{RANDOM_INIT['num_hidden_layers']}"
        return network, f"clip-vit-random-init-{shape}", RANDOM_INIT["projection_dim"]

    def pretrained_network(self) -> tuple[torch.nn.Module, str, int, str]:
        from transformers import CLIPVisionModelWithProjection  # heavy: on demand

        directory, sha256 = resolve_hub_weights("cmmd", HUB_ID, REVISION, FILES, LOCAL_NAME)
        return CLIPVisionModelWithProjection.from_pretrained(directory), f"{HUB_ID}@{REVISION[:12]}", DIM, sha256

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, 336, 336) float32, CLIP-normalised."""
        height, width = images.shape[1:3]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        square = images[:, top : top + side, left : left + side]
        x = square.to(self.device).permute(0, 3, 1, 2).float()
        x = resize_bicubic(x, SIZE, high=255.0) / 255.0
        return (x - self._mean) / self._std

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        embeds = self.network(pixel_values=x).image_embeds.double()
        return embeds / embeds.norm(dim=-1, keepdim=True)
