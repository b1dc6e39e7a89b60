"""Feature extractors for the image metrics: the interface, input checks and the registry.

An extractor maps uint8 images (B, H, W, 3) to float64 features (B, dim). It owns its whole
preprocessing, so the only thing a caller decides is the pixels. It never rescales: uint8 in,
and a float input is refused instead of guessed at (PRX fed uint8 images to a metric that
multiplied by 255 again and wrapped the values modulo 256, REFERENCE §5).

Every forward pass runs with TF32 off and sees exactly ``batch_size`` images (the last batch is
padded with copies of its final image), so GPU kernel selection, and with it the features, does
not depend on how the caller chunks its images.
"""

from __future__ import annotations

import contextlib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from speedrun.errors import SpeedrunError

DEFAULT_BATCH_SIZE = 50
# metric name -> "module:class"; imported on first use so FID never pulls in transformers or timm.
EXTRACTORS: dict[str, str] = {
    "fid": "speedrun.eval.inception:InceptionExtractor",
    "cmmd": "speedrun.eval.clip:ClipExtractor",
    "dino_mmd": "speedrun.eval.dino:DinoExtractor",
}


class Extractor(ABC):
    """Images in, float64 features out.

    Attributes:
        id: what the features mean: network, preprocessing version and, for random-init
            networks, "random-init" and the seed. Enters every cache key.
        weights_sha256: sha256 of the weights file(s); None for random-init networks.
        dim: feature dimension.
        batch_size: images per forward pass (fixed).
        device: where the network runs.
    """

    id: str
    weights_sha256: str | None
    dim: int

    def __init__(self, *, device: torch.device | str, batch_size: int):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size

    def __call__(self, images: Any) -> np.ndarray:
        """Features of ``images``, (B, H, W, 3) uint8 numpy array or tensor, as (B, dim) float64.

        Raises:
            SpeedrunError: the images are not uint8 (B, H, W, 3).
        """
        batch = as_uint8_images(images, who=self.id)
        count = batch.shape[0]
        out = np.empty((count, self.dim), dtype=np.float64)
        with tf32_disabled(), torch.inference_mode():
            for start in range(0, count, self.batch_size):
                chunk = batch[start : start + self.batch_size]
                real = chunk.shape[0]
                if real < self.batch_size:
                    padding = chunk[-1:].expand(self.batch_size - real, *chunk.shape[1:])
                    chunk = torch.cat([chunk, padding])
                features = self.embed(self.preprocess(chunk))[:real]
                out[start : start + real] = features.to(device="cpu", dtype=torch.float64).numpy()
        return out

    @abstractmethod
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 tensor, on any device -> the network's float input, on ``device``."""

    @abstractmethod
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Network input from ``preprocess`` -> (B, dim) features."""


def as_uint8_images(images: Any, *, who: str) -> torch.Tensor:
    """Check that ``images`` is a uint8 (B, H, W, 3) array or tensor and return it as a tensor.

    The tensor stays on its device; numpy input shares memory when it is writable. ``who`` names
    the caller in errors.
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise SpeedrunError(_dtype_message(who, f"numpy {images.dtype}"))
        array = np.ascontiguousarray(images)
        # torch warns on read-only arrays (e.g. np.load with mmap); a copy is cheaper than the forward.
        tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
    elif isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise SpeedrunError(_dtype_message(who, str(images.dtype)))
        tensor = images
    else:
        kind = type(images).__name__
        raise SpeedrunError(f"{who}: images must be a uint8 numpy array or torch tensor, got {kind}")
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise SpeedrunError(
            f"{who}: images must have shape (B, H, W, 3) (channels last, RGB), got {tuple(tensor.shape)}"
        )
    return tensor


def _dtype_message(who: str, dtype: str) -> str:
    return (
        f"{who}: images must be uint8 with values 0..255, got {dtype}. Quantise once where the images "
        "are made, e.g. x.mul(255).round().clamp(0, 255).to(torch.uint8) for [0, 1] floats; the "
        "extractor never rescales, so it refuses to guess the range."
    )


@contextlib.contextmanager
def tf32_disabled() -> Iterator[None]:
    """Turn TF32 off for CUDA matmuls and cuDNN inside the block, then restore the caller's setting.

    Uses the ``allow_tf32`` flags; if the process already set precision through torch's newer
    ``fp32_precision`` API (where reading the old flags raises), uses that API instead, since
    torch refuses mixed use.
    """
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    try:
        saved = (matmul.allow_tf32, cudnn.allow_tf32)
    except RuntimeError:
        saved_precision = (matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision)
        matmul.fp32_precision = cudnn.conv.fp32_precision = cudnn.rnn.fp32_precision = "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = saved_precision
        return
    matmul.allow_tf32 = cudnn.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


def resize_bicubic(x: torch.Tensor, size: int, high: float) -> torch.Tensor:
    """Bicubic resize of (B, C, H, W) float pixels in [0, high] to (B, C, size, size).

    Antialiased (matters only when shrinking) and clamped to [0, high]: bicubic overshoots at edges,
    and the PIL pipelines the metrics were defined with work on uint8, which cannot.
    """
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(
            x, size=(size, size), mode="bicubic", align_corners=False, antialias=True
        )
    return x.clamp(0.0, high)


def get_extractor(
    metric_name: str,
    *,
    device: torch.device | str,
    random_init: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Extractor:
    """The feature extractor a metric is defined with.

    Args:
        metric_name: "fid" (Inception, clean-fid "clean"), "cmmd" (CLIP ViT-L/14@336) or
            "dino_mmd" (DINOv2 ViT-L/14 with registers).
        device: where the network runs.
        random_init: a small randomly initialised network with the same interface and
            preprocessing, for the smoke track and tests; its id says "random-init".
        batch_size: images per forward pass.

    Raises:
        SpeedrunError: unknown metric name, or (pretrained) weights not available.
    """
    target = EXTRACTORS.get(metric_name)
    if target is None:
        raise SpeedrunError(
            f"no feature extractor for metric {metric_name!r}; choose one of {', '.join(sorted(EXTRACTORS))}"
        )
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(device=device, random_init=random_init, batch_size=batch_size)
