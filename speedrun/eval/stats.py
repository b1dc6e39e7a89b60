"""Feature statistics: streaming float64 moments, their .npz files, and the reference-stats cache (computed
once per (images, extractor, protocol); a cached file is trusted only after its content hash checks out)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from speedrun.errors import SpeedrunError
from speedrun.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from speedrun.eval.features import Extractor

# Bumped whenever the .npz layout or the cache-key recipe changes, so old files miss, never mislead.
STATS_FORMAT = 1


class StreamingMoments:
    """Mean and covariance of (B, dim) feature batches in float64 by Chan, Golub and LeVeque's pairwise
    co-moment update (each batch centred on its own mean: no cancellation), so any batch split agrees to
    1e-12. ``keep_features`` keeps every row (MMD, few-sample FID); ``meta`` (JSON) is saved with them."""

    def __init__(self, dim: int, *, keep_features: bool = False, meta: dict[str, Any] | None = None):
        self.dim = int(dim)
        self.keep_features = keep_features
        self.meta: dict[str, Any] = dict(meta or {})
        self.count = 0
        self._sum = np.zeros(self.dim, dtype=np.float64)
        self._comoment = np.zeros((self.dim, self.dim), dtype=np.float64)
        self._features: list[np.ndarray] = []

    def update(self, features: Any) -> None:
        """Add a batch of rows (B, dim); they are converted to float64 and must be finite."""
        x = np.asarray(features, dtype=np.float64)
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or inf; the extractor produced invalid output")
        n_a, n_b, sum_b = self.count, x.shape[0], x.sum(axis=0)
        centred = x - sum_b / n_b
        comoment_b = centred.T @ centred
        if n_a == 0:
            self._comoment = comoment_b
        else:
            delta = sum_b / n_b - self._sum / n_a
            self._comoment = self._comoment + comoment_b + np.outer(delta, delta) * (n_a * n_b / (n_a + n_b))
        self.count += n_b
        self._sum = self._sum + sum_b
        if self.keep_features:
            self._features.append(x.copy())

    @property
    def mean(self) -> np.ndarray:
        return self._sum / self.count

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (ddof=1), (dim, dim) float64, exactly symmetric."""
        cov = self._comoment / (self.count - 1)
        return (cov + cov.T) / 2

    @property
    def features(self) -> np.ndarray:
        """All rows seen, in order, (count, dim) float64. Only with ``keep_features=True``."""
        if not self.keep_features:
            raise ValueError("these statistics were built with keep_features=False")
        if len(self._features) != 1:
            self._features = [np.concatenate([np.zeros((0, self.dim)), *self._features])]
        return self._features[0]

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write an .npz atomically; returns the sha256 over every array's name, dtype, shape and
        bytes, which is stored in the file as ``sha256`` and checked by ``load``."""
        state = {
            "format": np.asarray(STATS_FORMAT, dtype=np.int64), "count": np.asarray(self.count, dtype=np.int64),
            "sum": self._sum, "comoment": self._comoment, "meta": np.asarray(json.dumps(self.meta, sort_keys=True)),
        }  # fmt: skip
        if self.keep_features:
            state["features"] = self.features
        digest = _content_sha256(state)
        buffer = io.BytesIO()
        np.savez(buffer, sha256=np.asarray(digest), **state)
        atomic_write_bytes(Path(path), buffer.getvalue())
        return digest

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> StreamingMoments:
        """Read a file written by ``save``; an unreadable or altered file is a SpeedrunError. Its format is
        that of the cache key (its file name), which ``reference_stats`` checks."""
        fix = "delete it and rerun to recompute the statistics"
        try:
            with np.load(path, allow_pickle=False) as data:
                state = {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise SpeedrunError(f"statistics file {path} is corrupted ({exc}); {fix}") from exc
        stored, actual = str(state.pop("sha256", None)), _content_sha256(state)
        if stored != actual:
            raise SpeedrunError(f"statistics file {path} is corrupted: content sha256 {actual} does not match the "
                                f"recorded {stored}; {fix}")
        total = np.asarray(state["sum"], dtype=np.float64)
        moments = cls(total.shape[0], keep_features="features" in state, meta=json.loads(str(state["meta"])))
        moments.count, moments._sum = int(state["count"]), total
        moments._comoment = np.asarray(state["comoment"], dtype=np.float64)
        if moments.keep_features:
            moments._features = [np.asarray(state["features"], dtype=np.float64)]
        return moments


def _content_sha256(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def images_sha256(batches: Iterable[Any]) -> str:
    """sha256 over (B, H, W, 3) uint8 batches, one image at a time, so the batch split does not change it."""
    from speedrun.eval.features import as_uint8_images  # features imports torch

    digest = hashlib.sha256()
    for batch in batches:
        for image in as_uint8_images(batch, who="images_sha256").cpu().numpy():
            digest.update(f"{image.shape}|".encode())
            digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def reference_stats(
    images: Iterable[Any], extractor: Extractor, cache_dir: str | os.PathLike[str], key_parts: dict[str, Any], *,
    images_hash: str | None = None, keep_features: bool = False,
) -> StreamingMoments:  # fmt: skip
    """Feature statistics of reference images, cached in ``cache_dir/<key>.npz`` (``key_material`` below). A cached
    file whose content hash or recorded key fails is a SpeedrunError, never silently recomputed over. ``images``:
    (B, H, W, 3) uint8 batches, re-iterable (hashed, then read on a miss) unless ``images_hash`` is given."""
    images_hash = images_hash or images_sha256(images)
    key_material = {
        "format": STATS_FORMAT, "images_sha256": images_hash, "extractor": extractor.id,
        "extractor_weights_sha256": extractor.weights_sha256, "protocol": key_parts, "keep_features": keep_features,
    }  # fmt: skip
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()
    path = Path(cache_dir) / f"{key}.npz"
    if path.exists():
        cached = StreamingMoments.load(path)
        if cached.meta.get("key") != key:
            raise SpeedrunError(f"cached statistics {path} were recorded under key {cached.meta.get('key')!r}, not "
                                "its file name; the file was moved or edited: delete it and rerun to recompute")
        return cached
    moments = StreamingMoments(extractor.dim, keep_features=keep_features, meta={"key": key, **key_material})
    for batch in images:
        moments.update(extractor(batch))
    moments.save(path)
    return moments
