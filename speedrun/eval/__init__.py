"""Evaluation metrics: feature extractors, float64 statistics, FID and MMD.

Public API:
    get_extractor(metric_name, *, device, random_init=False, batch_size=50) -> Extractor
    StreamingMoments(dim, *, keep_features=False)      streaming float64 mean/cov (+ features)
    reference_stats(images, extractor, cache_dir, key_parts, ...) -> StreamingMoments   (cached)
    frechet_distance(mu1, sigma1, mu2, sigma2) -> float
    frechet_distance_from_features(x, y) -> float      exact for n < d
    fid_from_moments(a, b) -> float                    picks the exact route by sample count
    mmd(x, y, sigma=10.0, scale=1000.0, block=1024) -> float
    resolve_inception_weights(explicit=None) -> (path, sha256)

Extractor modules (inception, clip, dino) are imported on demand by ``get_extractor``.
"""

from speedrun.eval.features import Extractor, get_extractor, tf32_disabled
from speedrun.eval.fid import fid_from_moments, frechet_distance, frechet_distance_from_features
from speedrun.eval.mmd import mmd
from speedrun.eval.stats import StreamingMoments, images_sha256, reference_stats
from speedrun.eval.weights import resolve_inception_weights

__all__ = [
    "Extractor",
    "StreamingMoments",
    "fid_from_moments",
    "frechet_distance",
    "frechet_distance_from_features",
    "get_extractor",
    "images_sha256",
    "mmd",
    "reference_stats",
    "resolve_inception_weights",
    "tf32_disabled",
]
