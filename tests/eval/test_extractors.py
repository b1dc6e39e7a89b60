"""The extractor contract, checked on the random-init networks (no weights needed).

uint8 in, float64 out; floats refused; pixel values reach the network unscaled-twice;
fixed-size forward passes; the registry; a clear error when pretrained weights are missing; and the
CLIP and DINO inputs against PIL's float bicubic and transformers' CLIPImageProcessor.
"""

from __future__ import annotations

import huggingface_hub.constants
import numpy as np
import pytest
import torch

from speedrun.errors import SpeedrunError
from speedrun.eval.features import get_extractor

METRICS = ("fid", "cmmd", "dino_mmd")


@pytest.fixture(scope="module")
def extractors():
    return {name: get_extractor(name, device="cpu", random_init=True, batch_size=3) for name in METRICS}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(4, 40, 56, 3), dtype=np.uint8)


class _Spy:
    """Stands in for ``embed``: records what reaches the network."""

    def __init__(self, dim: int):
        self.dim = dim
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return torch.zeros(x.shape[0], self.dim)


@pytest.mark.parametrize("name", METRICS)
def test_random_init_interface(extractors, images, name) -> None:
    extractor = extractors[name]
    out = extractor(images)
    assert out.shape == (4, extractor.dim) and out.dtype == np.float64 and np.isfinite(out).all()
    assert "random-init" in extractor.id and extractor.weights_sha256 is None
    assert np.array_equal(out, extractor(torch.from_numpy(images)))
    assert extractor(images[:0]).shape == (0, extractor.dim)
    if name != "fid":
        assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("name", METRICS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_non_uint8_input_is_refused(extractors, images, name, dtype) -> None:
    with pytest.raises(SpeedrunError, match="uint8"):
        extractors[name](images.astype(dtype) / (255 if dtype != np.int64 else 1))
    with pytest.raises(SpeedrunError, match="uint8"):
        extractors[name](torch.from_numpy(images).float() / 255)


def test_wrong_layout_is_refused(extractors, images) -> None:
    with pytest.raises(SpeedrunError, match=r"\(B, H, W, 3\)"):
        extractors["fid"](np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    with pytest.raises(SpeedrunError, match=r"\(B, H, W, 3\)"):
        extractors["fid"](images[0])


# What a constant uint8 value of 200 must become at the network input, computed from each metric's
# definition (REFERENCE §5). Multiplying uint8 by 255 again, as PRX's torchmetrics call did, turns
# 200 into 200 * 255 mod 256 = 56 and fails these.
_CLIP_MEAN, _CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_EXPECTED_200 = {
    "fid": [(200 - 128) / 128] * 3,
    "cmmd": [(200 / 255 - m) / s for m, s in zip(_CLIP_MEAN, _CLIP_STD)],
    "dino_mmd": [(200 / 255 - m) / s for m, s in zip(_IMAGENET_MEAN, _IMAGENET_STD)],
}
_INPUT_SIZE = {"fid": 299, "cmmd": 336, "dino_mmd": 518}


@pytest.mark.parametrize("name", METRICS)
def test_uint8_values_reach_the_network_unscaled(extractors, name, monkeypatch) -> None:
    extractor = extractors[name]
    spy = _Spy(extractor.dim)
    monkeypatch.setattr(extractor, "embed", spy)
    extractor(np.full((2, 24, 30, 3), 200, dtype=np.uint8))
    (x,) = spy.inputs
    size = _INPUT_SIZE[name]
    assert tuple(x.shape) == (3, 3, size, size)  # padded to the batch size of 3
    for channel, expected in enumerate(_EXPECTED_200[name]):
        assert torch.allclose(x[:, channel], torch.full_like(x[:, channel], expected), atol=1e-5)


def test_every_forward_pass_has_the_fixed_batch_size(extractors, images, monkeypatch) -> None:
    extractor = extractors["fid"]
    whole = extractor(images)
    parts = np.concatenate([extractor(images[:1]), extractor(images[1:])])
    assert np.allclose(whole, parts, rtol=1e-5, atol=1e-6)
    spy = _Spy(extractor.dim)
    monkeypatch.setattr(extractor, "embed", spy)
    extractor(images)
    assert [x.shape[0] for x in spy.inputs] == [3, 3]


@pytest.mark.parametrize(
    ("name", "hub_id"),
    [("cmmd", "openai/clip-vit-large-patch14-336"), ("dino_mmd", "timm/vit_large_patch14_reg4_dinov2.lvd142m")],
)
def test_missing_pretrained_weights_say_metric_unavailable(name, hub_id, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SPEEDRUN_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SpeedrunError, match="metric unavailable") as info:
        get_extractor(name, device="cpu")
    message = str(info.value)
    assert hub_id in message and "revision" in message and "SPEEDRUN_WEIGHTS_DIR" in message


def _pil_float_bicubic(images: np.ndarray, size: int) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, 3, size, size) in [0, 1]: PIL's bicubic on float ("F") channels, then
    clipped, the resize REFERENCE §5 names (clean-fid's "clean" resize, at the extractor's size)."""
    from PIL import Image

    def channel(plane: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(plane.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC))

    out = np.stack([np.stack([channel(image[..., c]) for c in range(3)]) for image in images])
    return np.clip(out, 0, 255) / 255.0


def _normalised(x: np.ndarray, mean, std) -> np.ndarray:
    return (x - np.array(mean)[None, :, None, None]) / np.array(std)[None, :, None, None]


def _smooth_image(height: int, width: int) -> np.ndarray:
    """Low-frequency colour waves: what generated and reference images look like to a resize, unlike
    noise, whose bicubic overshoot PIL's uint8 path clips between its two passes."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    waves = [127 + 100 * np.sin(2 * np.pi * (a * x + b * y) + c) for a, b, c in ((1, 2, 0), (3, 1, 1), (2, 2, 2))]
    return np.stack(waves, -1).round().astype(np.uint8)


@pytest.mark.parametrize("shape", [(32, 32), (40, 56)])
def test_dino_input_is_pil_float_bicubic_without_a_crop(extractors, shape) -> None:
    """Noise images, square and not: the whole image (aspect ratio not kept) resized to 518 as PIL
    does it on float pixels, clipped, ImageNet-normalised."""
    images = np.random.default_rng(1).integers(0, 256, size=(2, *shape, 3), dtype=np.uint8)
    ours = extractors["dino_mmd"].preprocess(torch.from_numpy(images)).numpy()
    expected = _normalised(_pil_float_bicubic(images, 518), _IMAGENET_MEAN, _IMAGENET_STD)
    assert ours.shape == expected.shape and np.abs(ours - expected).max() < 2e-4


@pytest.mark.parametrize("shape", [(32, 32), (40, 56), (56, 40)])
def test_clip_input_is_the_centre_square_pil_float_bicubic(extractors, shape) -> None:
    """Noise images: the centre square (offset (H - side) // 2, (W - side) // 2) resized to 336 as PIL
    does it on float pixels, clipped, CLIP-normalised."""
    images = np.random.default_rng(2).integers(0, 256, size=(2, *shape, 3), dtype=np.uint8)
    side = min(shape)
    top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
    square = images[:, top : top + side, left : left + side]
    ours = extractors["cmmd"].preprocess(torch.from_numpy(images)).numpy()
    expected = _normalised(_pil_float_bicubic(square, 336), _CLIP_MEAN, _CLIP_STD)
    assert ours.shape == expected.shape and np.abs(ours - expected).max() < 2e-4


@pytest.mark.parametrize("side", [32, 256])
def test_clip_input_matches_clips_own_image_processor(extractors, side) -> None:
    """transformers' CLIPImageProcessor with the openai/clip-vit-large-patch14-336 settings (shortest
    edge 336, centre crop 336, bicubic, /255, CLIP mean/std) resizes uint8 pixels and rounds them: on a
    smooth square image the two inputs agree to about one grey level (1/255/std = 0.015)."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, resample=Image.BICUBIC,
        image_mean=list(_CLIP_MEAN), image_std=list(_CLIP_STD),
    )
    image = _smooth_image(side, side)
    ours = extractors["cmmd"].preprocess(torch.from_numpy(image[None])).numpy()
    theirs = processor(images=[Image.fromarray(image)], return_tensors="np")["pixel_values"]
    assert ours.shape == theirs.shape
    difference = np.abs(ours - theirs)
    assert difference.max() < 0.02 and difference.mean() < 0.006
