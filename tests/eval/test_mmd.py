"""Blockwise Gaussian-RBF MMD against a dense float64 V-statistic and closed forms."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from speedrun.eval.mmd import mmd


def _dense_mmd(x: np.ndarray, y: np.ndarray, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """Every pair, diagonal included, with scipy's direct squared distances."""

    def mean_kernel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.exp(-cdist(a, b, "sqeuclidean") / (2 * sigma**2)).mean())

    return scale * (mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y))


@pytest.fixture(scope="module")
def xy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    # Pairwise distances of a few sigma, where the kernel is neither ~1 nor ~0.
    return rng.normal(size=(120, 16)) * 3.0, rng.normal(size=(95, 16)) * 3.0 + 0.8


def test_matches_dense_v_statistic(xy) -> None:
    x, y = xy
    expected = _dense_mmd(x, y)
    assert mmd(x, y) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert mmd(x, y, sigma=4.0, scale=1.0) == pytest.approx(_dense_mmd(x, y, 4.0, 1.0), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("block", [1, 7, 64])
def test_blockwise_equals_dense(xy, block: int) -> None:
    x, y = xy
    assert mmd(x, y, block=block) == pytest.approx(_dense_mmd(x, y), rel=1e-9, abs=1e-12)


def test_single_pair_closed_form() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(1, 8)) * 5, rng.normal(size=(1, 8)) * 5
    distance2 = float(((x - y) ** 2).sum())
    assert mmd(x, y) == pytest.approx(2000.0 * (1.0 - np.exp(-distance2 / 200.0)), rel=1e-12)


def test_same_set_is_exactly_zero(xy) -> None:
    x, _ = xy
    assert mmd(x, x) == 0.0
    assert mmd(x, x.copy(), block=13) == 0.0


def test_unit_vectors_small_difference_regime() -> None:
    """For unit vectors, CMMD ~= 10 |mu_x - mu_y|^2 (first order in |a - b|^2 / 2 sigma^2)."""
    rng = np.random.default_rng(2)
    d = 64
    base = rng.normal(size=d)
    base /= np.linalg.norm(base)
    offset = rng.normal(size=d) * 0.15

    def unit(z: np.ndarray) -> np.ndarray:
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    x = unit(base + rng.normal(size=(400, d)) * 0.1)
    y = unit(base + offset + rng.normal(size=(300, d)) * 0.1)
    gap = x.mean(axis=0) - y.mean(axis=0)
    assert mmd(x, y) == pytest.approx(10.0 * float(gap @ gap), rel=0.02)


def test_memory_is_bounded_by_the_block() -> None:
    rng = np.random.default_rng(3)
    n, block = 3000, 256
    x, y = rng.normal(size=(n, 8)), rng.normal(size=(n, 8))
    tracemalloc.start()
    try:
        mmd(x, y, block=block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    dense_bytes = n * n * 8  # one float64 kernel matrix: 72 MB
    assert peak < 8 * block * block * 8, f"peak {peak} bytes"
    assert peak < dense_bytes / 10
