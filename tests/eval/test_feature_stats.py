"""Streaming moments, their .npz files, and the reference-statistics cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speedrun.errors import SpeedrunError
from speedrun.eval.features import Extractor
from speedrun.eval.stats import StreamingMoments, images_sha256, reference_stats


def _moments(x: np.ndarray, splits: list[int], keep: bool = False) -> StreamingMoments:
    moments = StreamingMoments(x.shape[1], keep_features=keep)
    for part in np.split(x, splits):
        moments.update(part)
    return moments


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    rng = np.random.default_rng(0)
    # A mean far from zero relative to the spread: where E[xx^T] - mu mu^T would cancel.
    return rng.normal(size=(1000, 24)) * rng.uniform(0.1, 3.0, size=24) + 50.0


def test_batch_split_does_not_change_mean_or_cov(features) -> None:
    whole = _moments(features, [])
    ragged = _moments(features, [1, 3, 100, 101, 640])
    for a, b in ((whole.mean, ragged.mean), (whole.cov, ragged.cov)):
        assert np.max(np.abs(a - b)) <= 1e-12 * np.max(np.abs(a))
    assert whole.count == ragged.count == 1000


def test_matches_numpy(features) -> None:
    moments = _moments(features, [250, 500, 750])
    reference_cov = np.cov(features, rowvar=False, ddof=1)
    assert np.max(np.abs(moments.cov - reference_cov)) <= 1e-12 * np.max(np.abs(reference_cov))
    assert np.max(np.abs(moments.mean - features.mean(axis=0))) <= 1e-12 * 50.0
    assert moments.cov.dtype == np.float64 and np.array_equal(moments.cov, moments.cov.T)


def test_keeps_features_in_order(features) -> None:
    moments = _moments(features.astype(np.float32), [10, 500], keep=True)
    assert moments.features.dtype == np.float64
    assert np.array_equal(moments.features, features.astype(np.float32).astype(np.float64))
    with pytest.raises(ValueError, match="keep_features"):
        _ = _moments(features, []).features


def test_rejects_non_finite() -> None:
    moments = StreamingMoments(4)
    with pytest.raises(ValueError, match="NaN"):
        moments.update(np.full((2, 4), np.nan))


def test_save_load_roundtrip_is_exact(tmp_path, features) -> None:
    moments = _moments(features, [333], keep=True)
    moments.meta = {"note": "roundtrip"}
    digest = moments.save(tmp_path / "stats.npz")
    loaded = StreamingMoments.load(tmp_path / "stats.npz")
    assert len(digest) == 64
    assert loaded.count == moments.count and loaded.meta == {"note": "roundtrip"}
    assert np.array_equal(loaded.mean, moments.mean) and np.array_equal(loaded.cov, moments.cov)
    assert np.array_equal(loaded.features, moments.features)
    # Loaded statistics keep streaming.
    loaded.update(features[:5])
    assert loaded.count == moments.count + 5


def test_statistics_that_cannot_be_saved_are_one_message(tmp_path, features, monkeypatch) -> None:
    # The cache goes through the harness's atomic write: a full disk keeps the old file and leaves no
    # temporary one behind.
    path = tmp_path / "stats.npz"
    old = _moments(features, [333]).save(path)

    def full(*_a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", full)
    with pytest.raises(SpeedrunError, match=f"{path}: cannot write it \\(No space left on device\\)"):
        _moments(features[:100], [50]).save(path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["stats.npz"]
    assert StreamingMoments.load(path).count == len(features) and len(old) == 64


def test_altered_file_is_reported_with_its_path(tmp_path, features) -> None:
    path = tmp_path / "stats.npz"
    _moments(features, []).save(path)
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["sum"] = arrays["sum"] + 1e-9
    np.savez(path, **arrays)
    with pytest.raises(SpeedrunError, match=str(path)) as info:
        StreamingMoments.load(path)
    assert "sha256" in str(info.value)


def test_truncated_file_is_reported_with_its_path(tmp_path, features) -> None:
    path = tmp_path / "stats.npz"
    _moments(features, []).save(path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(SpeedrunError, match=f"{path}.*corrupted"):
        StreamingMoments.load(path)


class _MeanColour(Extractor):
    """A cheap stand-in: features are the mean colour of each image (3-d); counts forward passes."""

    id = "test-mean-colour"
    weights_sha256 = None
    dim = 3

    def __init__(self, batch_size: int = 4):
        super().__init__(device="cpu", batch_size=batch_size)
        self.passes = 0

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return images.float()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        self.passes += 1
        return x.mean(dim=(1, 2))


@pytest.fixture
def batches() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8) for _ in range(3)]


def test_reference_stats_are_computed_once_then_loaded(tmp_path, batches) -> None:
    extractor = _MeanColour()
    first = reference_stats(batches, extractor, tmp_path, {"metric": "test", "size": 8})
    passes = extractor.passes
    assert passes > 0 and first.count == 15
    again = reference_stats(batches, extractor, tmp_path, {"metric": "test", "size": 8})
    assert extractor.passes == passes
    assert np.array_equal(again.mean, first.mean) and np.array_equal(again.cov, first.cov)
    direct = np.concatenate(batches).reshape(15, -1, 3).mean(axis=1)
    assert np.allclose(first.mean, direct.mean(axis=0), rtol=1e-12)
    assert len(list(tmp_path.glob("*.npz"))) == 1


def test_reference_stats_key_covers_images_extractor_and_protocol(tmp_path, batches) -> None:
    extractor = _MeanColour()
    reference_stats(batches, extractor, tmp_path, {"metric": "test"})
    reference_stats(batches, extractor, tmp_path, {"metric": "test", "size": 8})
    reference_stats(batches[:2], extractor, tmp_path, {"metric": "test"})
    other = _MeanColour()
    other.id = "test-mean-colour-v2"
    reference_stats(batches, other, tmp_path, {"metric": "test"})
    reference_stats(batches, extractor, tmp_path, {"metric": "test"}, keep_features=True)
    assert len(list(tmp_path.glob("*.npz"))) == 5


def test_reference_stats_report_a_corrupted_cache_file(tmp_path, batches) -> None:
    reference_stats(batches, _MeanColour(), tmp_path, {"metric": "test"})
    (path,) = tmp_path.glob("*.npz")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SpeedrunError, match=str(path)):
        reference_stats(batches, _MeanColour(), tmp_path, {"metric": "test"})


def test_reference_stats_refuse_a_file_moved_to_another_key(tmp_path, batches) -> None:
    reference_stats(batches, _MeanColour(), tmp_path, {"metric": "a"})
    (path,) = tmp_path.glob("*.npz")
    reference_stats(batches, _MeanColour(), tmp_path / "b", {"metric": "b"})
    (other,) = (tmp_path / "b").glob("*.npz")
    path.replace(other)
    with pytest.raises(SpeedrunError, match="moved or edited"):
        reference_stats(batches, _MeanColour(), tmp_path / "b", {"metric": "b"})


def test_one_shot_iterators_take_an_images_hash(tmp_path, batches) -> None:
    digest = images_sha256(batches)
    from_iterator = reference_stats(iter(batches), _MeanColour(), tmp_path, {"metric": "test"}, images_hash=digest)
    from_list = reference_stats(batches, _MeanColour(), tmp_path, {"metric": "test"})
    assert from_list.meta["key"] == from_iterator.meta["key"]


def test_images_hash_ignores_the_batch_split(batches) -> None:
    whole = np.concatenate(batches)
    assert images_sha256(batches) == images_sha256([whole]) == images_sha256([torch.from_numpy(whole)])
    changed = whole.copy()
    changed[0, 0, 0, 0] ^= 1
    assert images_sha256([changed]) != images_sha256([whole])
