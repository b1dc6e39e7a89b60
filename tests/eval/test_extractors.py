"""The extractor contract, checked on the random-init networks (no weights needed).

uint8 in, float64 out; floats refused; pixel values reach the network unscaled-twice; TF32 off;
fixed-size forward passes; the registry; and a clear error when pretrained weights are missing.
"""

from __future__ import annotations

import huggingface_hub.constants
import numpy as np
import pytest
import torch

from speedrun.errors import SpeedrunError
from speedrun.eval import features as features_module
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
    """Stands in for ``embed``: records what reaches the network and the TF32 flags at that moment."""

    def __init__(self, dim: int):
        self.dim = dim
        self.inputs: list[torch.Tensor] = []
        self.tf32: list[tuple[bool, bool]] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        self.tf32.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
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


def test_tf32_is_off_during_extraction_and_restored(extractors, images, monkeypatch) -> None:
    extractor = extractors["fid"]
    spy = _Spy(extractor.dim)
    monkeypatch.setattr(extractor, "embed", spy)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        extractor(images)
        assert spy.tf32 and all(flags == (False, False) for flags in spy.tf32)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_every_forward_pass_has_the_fixed_batch_size(extractors, images, monkeypatch) -> None:
    extractor = extractors["fid"]
    whole = extractor(images)
    parts = np.concatenate([extractor(images[:1]), extractor(images[1:])])
    assert np.allclose(whole, parts, rtol=1e-5, atol=1e-6)
    spy = _Spy(extractor.dim)
    monkeypatch.setattr(extractor, "embed", spy)
    extractor(images)
    assert [x.shape[0] for x in spy.inputs] == [3, 3]


def test_unknown_metric_is_named(extractors) -> None:
    with pytest.raises(SpeedrunError, match="'kid'.*cmmd, dino_mmd, fid"):
        get_extractor("kid", device="cpu")


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


def test_tf32_guard_copes_with_the_new_precision_api() -> None:
    """If a process set TF32 through ``fp32_precision``, reading ``allow_tf32`` raises in torch; the
    guard then switches that API to IEEE and restores it."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision)
    try:
        matmul.fp32_precision = "tf32"
        cudnn.conv.fp32_precision = "tf32"
        cudnn.rnn.fp32_precision = "ieee"
        with features_module.tf32_disabled():
            assert (matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision) == ("ieee",) * 3
        assert (matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision) == ("tf32", "tf32", "ieee")
    finally:
        matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = saved
