"""DINO-MMD features: DINOv2 ViT-L/14 with 4 registers, final-norm CLS token, L2-normalised (1024-d).

Preprocessing: /255, bicubic resize to 518 x 518 (no crop, aspect ratio not kept), ImageNet
mean/std. The network is timm's ``vit_large_patch14_reg4_dinov2.lvd142m`` (the weights of
``dinov2_vitl14_reg``), loaded from ``timm/vit_large_patch14_reg4_dinov2.lvd142m`` at a pinned
revision; the features are token 0 (CLS) of ``forward_features``, i.e. after the final LayerNorm,
divided by their L2 norm in float64.
"""

from __future__ import annotations

import torch

from speedrun.eval.features import DEFAULT_BATCH_SIZE, Extractor, resize_bicubic
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
RANDOM_INIT_SEED = 0


class DinoExtractor(Extractor):
    """DINOv2 ViT-L/14-reg4 CLS features, unit norm; ``dim`` 1024.

    Args:
        device: where the network and preprocessing run.
        random_init: a 2-block, 32-wide random ViT/14 with 4 registers (32-d) with the same
            preprocessing, for plumbing tests.
        batch_size: images per forward pass.

    Raises:
        SpeedrunError: "metric unavailable" when the pinned weights are neither in
            ``$SPEEDRUN_WEIGHTS_DIR/vit_large_patch14_reg4_dinov2.lvd142m/`` nor in the Hugging
            Face cache.
    """

    def __init__(
        self, *, device: torch.device | str, random_init: bool = False, batch_size: int = DEFAULT_BATCH_SIZE
    ):
        super().__init__(device=device, batch_size=batch_size)
        import timm  # noqa: PLC0415 (heavy)
        from timm.models.vision_transformer import VisionTransformer  # noqa: PLC0415

        if random_init:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                # The DINOv2-reg4 layout (layer scale, registers, no class-token pos-embed), shrunk.
                network = VisionTransformer(
                    img_size=SIZE, patch_size=14, init_values=1e-5, reg_tokens=4, no_embed_class=True,
                    num_classes=0, **RANDOM_INIT,
                )
            shape = f"d{RANDOM_INIT['embed_dim']}-l{RANDOM_INIT['depth']}"
            self.id = f"dinov2-reg4-random-init-{shape}-seed{RANDOM_INIT_SEED}/{PREPROCESSING}"
            self.weights_sha256 = None
            self.dim = RANDOM_INIT["embed_dim"]
        else:
            directory, self.weights_sha256 = resolve_hub_weights("dino_mmd", HUB_ID, REVISION, FILES, LOCAL_NAME)
            local_file = {"file": str(directory / FILES[0])}
            network = timm.create_model(TIMM_NAME, pretrained=True, num_classes=0, pretrained_cfg_overlay=local_file)
            self.id = f"{HUB_ID}@{REVISION[:12]}/{PREPROCESSING}"
            self.dim = DIM
        self.network = network.to(self.device, dtype=torch.float32).eval()
        self._mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, 518, 518) float32, ImageNet-normalised."""
        x = images.to(self.device).permute(0, 3, 1, 2).float() / 255.0
        x = resize_bicubic(x, SIZE, high=1.0)
        return (x - self._mean) / self._std

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        cls_token = self.network.forward_features(x)[:, 0].double()
        return cls_token / cls_token.norm(dim=-1, keepdim=True)
