"""CMMD features: CLIP ViT-L/14@336 image embeddings, L2-normalised (768-d).

Preprocessing: centre crop to the largest square, bicubic resize to 336 x 336 on float pixels,
/255, CLIP mean/std. The network is ``CLIPVisionModelWithProjection`` from
``openai/clip-vit-large-patch14-336`` at a pinned revision; the features are its ``image_embeds``
(the projection of the pooled CLS token), divided by their L2 norm in float64.
"""

from __future__ import annotations

import torch

from speedrun.eval.features import DEFAULT_BATCH_SIZE, Extractor, resize_bicubic
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
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "projection_dim": 32,
}
RANDOM_INIT_SEED = 0


class ClipExtractor(Extractor):
    """CLIP ViT-L/14@336 image embeddings, unit norm; ``dim`` 768.

    Args:
        device: where the network and preprocessing run.
        random_init: a 2-layer, 32-wide random CLIP vision tower (32-d) with the same
            preprocessing, for plumbing tests.
        batch_size: images per forward pass.

    Raises:
        SpeedrunError: "metric unavailable" when the pinned weights are neither in
            ``$SPEEDRUN_WEIGHTS_DIR/clip-vit-large-patch14-336/`` nor in the Hugging Face cache.
    """

    def __init__(
        self, *, device: torch.device | str, random_init: bool = False, batch_size: int = DEFAULT_BATCH_SIZE
    ):
        super().__init__(device=device, batch_size=batch_size)
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection  # noqa: PLC0415 (heavy)

        if random_init:
            config = CLIPVisionConfig(image_size=SIZE, patch_size=14, **RANDOM_INIT)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                network = CLIPVisionModelWithProjection(config)
            shape = f"h{RANDOM_INIT['hidden_size']}-l{RANDOM_INIT['num_hidden_layers']}"
            self.id = f"clip-vit-random-init-{shape}-seed{RANDOM_INIT_SEED}/{PREPROCESSING}"
            self.weights_sha256 = None
            self.dim = RANDOM_INIT["projection_dim"]
        else:
            directory, self.weights_sha256 = resolve_hub_weights("cmmd", HUB_ID, REVISION, FILES, LOCAL_NAME)
            network = CLIPVisionModelWithProjection.from_pretrained(directory)
            self.id = f"{HUB_ID}@{REVISION[:12]}/{PREPROCESSING}"
            self.dim = DIM
        self.network = network.to(self.device, dtype=torch.float32).eval()
        self._mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)

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
