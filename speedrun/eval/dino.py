"""DINO-MMD features: the CLS token after the final norm of timm's ``vit_large_patch14_reg4_dinov2.lvd142m``
(pinned), L2-normalised in float64 (1024-d), of /255, bicubic 518 x 518 (no crop), ImageNet mean/std input."""

from __future__ import annotations

import torch

from speedrun.eval.features import NetworkExtractor, resize_bicubic
from speedrun.eval.weights import resolve_hub_weights

TIMM_NAME = "vit_large_patch14_reg4_dinov2.lvd142m"
HUB_ID = f"timm/{TIMM_NAME}"
REVISION = "f3c408e77602bb412aa65fb03dfa0d5f95cb3832"
FILES = ("model.safetensors",)
LOCAL_NAME = TIMM_NAME
SIZE = 518
DIM = 1024
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PREPROCESSING = "bicubic518-imagenetnorm-v1"
RANDOM_INIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}


class DinoExtractor(NetworkExtractor):
    """``random_init``: a 2-block, 32-wide random ViT/14 with 4 registers (32-d), same preprocessing."""

    preprocessing, mean, std = PREPROCESSING, MEAN, STD

    def random_network(self) -> tuple[torch.nn.Module, str, int]:
        from timm.models.vision_transformer import VisionTransformer  # heavy: on demand

        # The DINOv2-reg4 layout (layer scale, registers, no class-token pos-embed), shrunk.
        network = VisionTransformer(
            img_size=SIZE, patch_size=14, init_values=1e-5, reg_tokens=4, no_embed_class=True, num_classes=0,
            **RANDOM_INIT,
        )
        shape = f"d{RANDOM_INIT['embed_dim']}-l{RANDOM_INIT['depth']}"
        return network, f"dinov2-reg4-random-init-{shape}", RANDOM_INIT["embed_dim"]

    def pretrained_network(self) -> tuple[torch.nn.Module, str, int, str]:
        import timm  # heavy: on demand

        directory, sha256 = resolve_hub_weights("dino_mmd", HUB_ID, REVISION, FILES, LOCAL_NAME)
        local_file = {"file": str(directory / FILES[0])}
        network = timm.create_model(TIMM_NAME, pretrained=True, num_classes=0, pretrained_cfg_overlay=local_file)
        return network, f"{HUB_ID}@{REVISION[:12]}", DIM, sha256

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, 518, 518) float32, ImageNet-normalised."""
        x = images.to(self.device).permute(0, 3, 1, 2).float() / 255.0
        x = resize_bicubic(x, SIZE, high=1.0)
        return (x - self._mean) / self._std

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        cls_token = self.network.forward_features(x)[:, 0].double()
        return cls_token / cls_token.norm(dim=-1, keepdim=True)
