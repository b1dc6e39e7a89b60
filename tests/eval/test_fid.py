"""Fréchet distance against independent references: clean-fid (scipy sqrtm) and closed forms."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import scipy.linalg
from cleanfid.fid import frechet_distance as cleanfid_frechet_distance

from speedrun.eval.fid import fid_from_moments, frechet_distance, frechet_distance_from_features
from speedrun.eval.stats import StreamingMoments


def _features(rng: np.random.Generator, n: int, d: int, shift: float = 0.0, rank: int = 8) -> np.ndarray:
    """Correlated, anisotropic features: per-dimension scales plus a low-rank shared component."""
    scales = rng.uniform(0.5, 2.0, size=d)
    mixing = rng.normal(size=(rank, d))
    return rng.normal(size=(n, d)) * scales + rng.normal(size=(n, rank)) @ mixing + shift


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _cleanfid(mu1, sigma1, mu2, sigma2) -> float:
    # clean-fid passes scipy's deprecated `disp` argument and prints on singular products.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(cleanfid_frechet_distance(mu1, sigma1, mu2, sigma2))


def _dense_trace_sqrt(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(np.trace(scipy.linalg.sqrtm(sigma1 @ sigma2)).real)


@pytest.fixture(scope="module")
def stats_2048() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(2048)
    x = _features(rng, 3000, 2048)
    y = _features(rng, 3000, 2048, shift=0.05)
    return _stats(x), _stats(y)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_cleanfid_small(seed: int) -> None:
    rng = np.random.default_rng(seed)
    (mu1, s1), (mu2, s2) = _stats(_features(rng, 400, 64)), _stats(_features(rng, 300, 64, shift=0.3))
    expected = _cleanfid(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow  # scipy sqrtm at d = 2048: about a minute on a small CPU
def test_matches_cleanfid_d2048_n3000(stats_2048) -> None:
    (mu1, s1), (mu2, s2) = stats_2048
    expected = _cleanfid(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_identical_statistics_give_zero(stats_2048) -> None:
    # FD(s, s) = 2 tr s - 2 tr sqrt(s s) cancels two terms of size 2 tr s, so its round-off scales
    # with tr s: at d = 2048 (tr s ~ 2e4) it was 0 on an AMD EPYC and -3.6e-9 on an Intel Xeon.
    # 1e-12 relative is ~4000 float64 epsilons and still catches any real error in the sqrt.
    rng = np.random.default_rng(3)
    mu, sigma = _stats(_features(rng, 1000, 64))
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-12 * 2 * np.trace(sigma)
    (mu, sigma), _ = stats_2048
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-12 * 2 * np.trace(sigma)


def test_shift_gives_squared_norm() -> None:
    rng = np.random.default_rng(4)
    x = _features(rng, 1000, 32)
    c = rng.normal(size=32)
    mu1, s1 = _stats(x)
    mu2, s2 = _stats(x + c)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(float(c @ c), rel=1e-9)


def test_few_samples_no_nan_and_match_nuclear_norm_and_dense() -> None:
    rng = np.random.default_rng(5)
    d = 64
    x, y = _features(rng, 20, d), _features(rng, 30, d, shift=0.2)
    (mu1, s1), (mu2, s2) = _stats(x), _stats(y)
    value = frechet_distance_from_features(x, y)
    assert np.isfinite(value)
    # Nuclear-norm closed form written out here: tr sqrt(S1 S2) = sum of singular values of A B^T.
    a = (x - mu1) / np.sqrt(len(x) - 1)
    b = (y - mu2) / np.sqrt(len(y) - 1)
    nuclear = scipy.linalg.svdvals(a @ b.T).sum()
    by_formula = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * nuclear)
    assert value == pytest.approx(by_formula, rel=1e-10)
    dense = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * _dense_trace_sqrt(s1, s2))
    assert value == pytest.approx(dense, rel=1e-6)
    # The statistics route stays finite on rank-deficient input, if less exact.
    assert np.isfinite(frechet_distance(mu1, s1, mu2, s2))
    assert abs(frechet_distance_from_features(x, x)) < 1e-9


def _moments(x: np.ndarray, keep: bool) -> StreamingMoments:
    moments = StreamingMoments(x.shape[1], keep_features=keep)
    moments.update(x)
    return moments


def test_fid_from_moments_routes() -> None:
    rng = np.random.default_rng(6)
    d = 48
    many, other_many = _features(rng, 600, d), _features(rng, 500, d, shift=0.1)
    few, other_few = _features(rng, 20, d, shift=0.2), _features(rng, 25, d)
    # Both full rank: the statistics route.
    expected = frechet_distance(*_stats(many), *_stats(other_many))
    assert fid_from_moments(_moments(many, False), _moments(other_many, False)) == pytest.approx(expected, rel=1e-12)
    # Both few: the features route.
    expected = frechet_distance_from_features(few, other_few)
    assert fid_from_moments(_moments(few, True), _moments(other_few, True)) == pytest.approx(expected, rel=1e-12)
    # Mixed, either order: equals the all-features nuclear norm and the dense scipy value.
    expected = frechet_distance_from_features(many, few)
    (mu1, s1), (mu2, s2) = _stats(many), _stats(few)
    dense = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * _dense_trace_sqrt(s1, s2))
    for pair in ((_moments(many, False), _moments(few, True)), (_moments(few, True), _moments(many, False))):
        value = fid_from_moments(*pair)
        assert value == pytest.approx(expected, rel=1e-9)
        assert value == pytest.approx(dense, rel=1e-6)
    assert abs(fid_from_moments(_moments(few, True), _moments(few, True))) < 1e-9


def test_fid_from_moments_needs_features_when_rank_deficient() -> None:
    rng = np.random.default_rng(7)
    few, many = _features(rng, 10, 32), _features(rng, 100, 32)
    with pytest.raises(ValueError, match="keep_features"):
        fid_from_moments(_moments(many, False), _moments(few, False))


def test_float32_inputs_are_computed_in_float64() -> None:
    rng = np.random.default_rng(8)
    (mu1, s1), (mu2, s2) = _stats(_features(rng, 300, 16)), _stats(_features(rng, 300, 16, shift=0.5))
    low = [a.astype(np.float32) for a in (mu1, s1, mu2, s2)]
    assert frechet_distance(*low) == frechet_distance(*[a.astype(np.float64) for a in low])


def test_cholesky_and_eigh_square_root_give_the_same_trace() -> None:
    """Any factor S1 = F F^T gives eig(F^T S2 F) = eig(S1 S2); both routes must agree."""
    from speedrun.eval import fid  # noqa: PLC0415 (private helpers, this test only)

    rng = np.random.default_rng(9)
    _, s1 = _stats(_features(rng, 200, 32))
    _, s2 = _stats(_features(rng, 200, 32, shift=1.0))
    root = fid._sqrt_psd(s1)
    middle = root @ s2 @ root
    by_eigh = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    assert fid._trace_sqrt_product(s1, s2) == pytest.approx(by_eigh, rel=1e-12)
    assert fid._trace_sqrt_product(s1, s2) == pytest.approx(_dense_trace_sqrt(s1, s2), rel=1e-9)
