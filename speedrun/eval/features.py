"""Feature extractors: uint8 images (B, H, W, 3) -> float64 features (B, dim), preprocessing included.

A float input is refused, never rescaled (PRX fed uint8 images to a metric that multiplied by 255 again
and wrapped modulo 256, REFERENCE §5). Every forward runs on exactly ``batch_size`` images (the last batch
padded with its final image), so features do not depend on how the caller chunks images; eval.run turns TF32 off.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from speedrun.errors import SpeedrunError

DEFAULT_BATCH_SIZE = 50
RANDOM_INIT_SEED = 0  # of every random-init network; enters its id
# metric name -> "module:class"; imported on first use so FID never pulls in transformers or timm.
EXTRACTORS: dict[str, str] = {
    "fid": "speedrun.eval.inception:InceptionExtractor",
    "cmmd": "speedrun.eval.clip:ClipExtractor",
    "dino_mmd": "speedrun.eval.dino:DinoExtractor",
}


class Extractor(ABC):
    """Images in, float64 features out."""

    id: str  # network, preprocessing version (and "random-init" and seed); enters every cache key
    weights_sha256: str | None = None  # of the weights file(s); None for random-init networks
    dim: int

    def __init__(self, *, device: torch.device | str, batch_size: int):
        self.device = torch.device(device)
        self.batch_size = batch_size

    def __call__(self, images: Any) -> np.ndarray:
        """(B, dim) float64 features of ``images``, a (B, H, W, 3) uint8 numpy array or tensor."""
        batch = as_uint8_images(images, who=self.id)
        count = batch.shape[0]
        out = np.empty((count, self.dim), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, count, self.batch_size):
                chunk = batch[start : start + self.batch_size]
                real = chunk.shape[0]
                if real < self.batch_size:
                    chunk = torch.cat([chunk, chunk[-1:].expand(self.batch_size - real, *chunk.shape[1:])])
                features = self.embed(self.preprocess(chunk))[:real]
                out[start : start + real] = features.to(device="cpu", dtype=torch.float64).numpy()
        return out

    @abstractmethod
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 tensor, on any device -> the network's float input, on ``device``."""

    @abstractmethod
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Network input from ``preprocess`` -> (B, dim) features."""


class NetworkExtractor(Extractor):
    """An extractor around one network (float32, eval mode, on ``device``): ``pretrained_network()`` ->
    (network, id stem, dim, weights sha256), or with ``random_init`` ``random_network()`` -> (network, id
    stem, dim), a small network of the same interface built under RANDOM_INIT_SEED (the caller's CPU RNG
    left as it was). ``mean``/``std``: per-channel normalisation constants, kept on ``device``."""

    preprocessing: str
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __init__(self, *, device: torch.device | str, random_init: bool = False, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__(device=device, batch_size=batch_size)
        if random_init:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                network, name, self.dim = self.random_network()
            self.id = f"{name}-seed{RANDOM_INIT_SEED}/{self.preprocessing}"
        else:
            network, name, self.dim, self.weights_sha256 = self.pretrained_network()
            self.id = f"{name}/{self.preprocessing}"
        self.network = network.to(self.device, dtype=torch.float32).eval()
        if self.mean is not None:
            self._mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
            self._std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)


def as_uint8_images(images: Any, *, who: str) -> torch.Tensor:
    """``images``, a uint8 (B, H, W, 3) array or tensor, as a tensor on its device (sharing a writable
    array's memory); ``who`` names the caller in errors."""
    dtype = getattr(images, "dtype", type(images).__name__)
    if not isinstance(images, (np.ndarray, torch.Tensor)) or str(dtype) not in ("uint8", "torch.uint8"):
        raise SpeedrunError(f"{who}: images must be a uint8 numpy array or torch tensor (values 0..255), got {dtype}; "
                            "quantise once where they are made, e.g. x.mul(255).round().clamp(0, 255).to(torch.uint8)")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise SpeedrunError(f"{who}: images must have shape (B, H, W, 3) (channels last), got {tuple(images.shape)}")
    if isinstance(images, np.ndarray):
        array = np.ascontiguousarray(images)
        # torch warns on read-only arrays (e.g. np.load with mmap); a copy is cheaper than the forward.
        images = torch.from_numpy(array if array.flags.writeable else array.copy())
    return images


def resize_bicubic(x: torch.Tensor, size: int, high: float) -> torch.Tensor:
    """Bicubic, antialiased resize of (B, C, H, W) float pixels in [0, high] to (B, C, size, size),
    clamped to [0, high]: bicubic overshoots, the uint8 PIL pipelines the metrics were defined with cannot."""
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp(0.0, high)


def get_extractor(
    metric_name: str, *, device: torch.device | str, random_init: bool = False, batch_size: int = DEFAULT_BATCH_SIZE
) -> Extractor:
    """The feature extractor metric ``fid``, ``cmmd`` or ``dino_mmd`` is defined with (SpeedrunError without its
    weights); ``random_init``: a small random network of the same interface and preprocessing (smoke track, tests)."""
    module_name, class_name = EXTRACTORS[metric_name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(device=device, random_init=random_init, batch_size=batch_size)
