"""Fréchet distance FD = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2) between Gaussian fits, in float64.

tr sqrt(S1 S2) is a symmetric eigenproblem on F^T S2 F for S1 = F F^T (Cholesky, else S1^1/2): exact for any
PSD pair and far faster than ``scipy.linalg.sqrtm``. With fewer samples than dimensions it is the nuclear norm
of the scaled centred features instead (near-zero eigenvalues would bias it); ``fid_from_moments`` picks by
rank. Never float32: it moved FID by up to 0.6 at n = 1000 (REFERENCE §5).
"""

from __future__ import annotations

import numpy as np

from speedrun.eval.stats import StreamingMoments


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """FD between N(mu1, sigma1) and N(mu2, sigma2) for means (d,) and PSD covariances (d, d), in
    squared feature units; round-off negative eigenvalues are clipped to 0."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    diff = mu1 - mu2
    trace_sqrt = _trace_sqrt_product(sigma1, sigma2)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def frechet_distance_from_features(x, y) -> float:
    """FD between the Gaussian fits (mean, ddof=1 covariance) of features x (n, d) and y (m, d),
    n, m >= 2: exact for any counts, at cost O(n m d + min(n, m)^2 max(n, m))."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    a, mu1 = _scaled_centred(x)
    b, mu2 = _scaled_centred(y)
    diff = mu1 - mu2
    # tr S = ||A||_F^2 for S = A^T A.
    trace_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    return float(diff @ diff + np.sum(a * a) + np.sum(b * b) - 2.0 * trace_sqrt)


def fid_from_moments(a: StreamingMoments, b: StreamingMoments) -> float:
    """FD between two ``StreamingMoments`` by the exact route for their ranks (count - 1 >= dim: full): both
    full, ``frechet_distance``; one rank-deficient, tr sqrt(S_full S_few) = ||B F||_* with F F^T = S_full and
    B the few side's scaled centred features (which it must have kept); none, ``frechet_distance_from_features``."""
    few_a, few_b = a.count - 1 < a.dim, b.count - 1 < b.dim
    if not (few_a or few_b):
        return frechet_distance(a.mean, a.cov, b.mean, b.cov)
    if few_a and few_b:
        return frechet_distance_from_features(a.features, b.features)
    full, few = (b, a) if few_a else (a, b)
    scaled, _ = _scaled_centred(few.features)
    diff = full.mean - few.mean
    trace_sqrt = np.linalg.svd(scaled @ _psd_factor(full.cov), compute_uv=False).sum()
    return float(diff @ diff + np.trace(full.cov) + np.sum(scaled * scaled) - 2.0 * trace_sqrt)


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrt(S1 S2) = sum sqrt(eig(F^T S2 F)) for S1 = F F^T; F^T S2 F is symmetric PSD."""
    factor = _psd_factor(sigma1)
    middle = factor.T @ sigma2 @ factor
    # Symmetrise away the round-off asymmetry of the triple product; eigvalsh reads one triangle.
    middle = (middle + middle.T) / 2
    eigenvalues = np.linalg.eigvalsh(middle)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def _psd_factor(sigma: np.ndarray) -> np.ndarray:
    """F with F F^T = sigma: the Cholesky factor if sigma is positive definite, else sigma^1/2."""
    try:
        return np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError:
        return _sqrt_psd(sigma)


def _sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix; round-off negative eigenvalues become 0."""
    eigenvalues, eigenvectors = np.linalg.eigh(sigma)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def _scaled_centred(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x - mean) / sqrt(n - 1), whose Gram matrix A^T A is the ddof=1 covariance, and the mean."""
    mean = x.mean(axis=0)
    return (x - mean) / np.sqrt(x.shape[0] - 1), mean
