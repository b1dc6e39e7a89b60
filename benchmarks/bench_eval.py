"""Metric benchmarks (pytest-benchmark; pyproject disables benchmarks by default):

    python -m pytest benchmarks/bench_eval.py --benchmark-enable -q

- Fréchet distance from 2048-d statistics: ours (Cholesky/eigh + eigvalsh, float64) against
  clean-fid's scipy ``sqrtm`` route on the same statistics. Target: >= 5x faster.
- MMD at n = m = 20,000, d = 768 (CMMD's shape at a 20k-sample evaluation): peak Python-heap
  memory during the call, measured with tracemalloc (numpy reports its buffers to it). Target:
  bounded by the block (a few 8 MB blocks), not by n^2 (3.2 GB per dense float64 kernel matrix).
  It runs ~1.8 TFLOP of float64 matmul: minutes on a small CPU.
"""

from __future__ import annotations

import contextlib
import io
import os
import tracemalloc
import warnings

import numpy as np
import pytest
from cleanfid.fid import frechet_distance as cleanfid_frechet_distance

from speedrun.eval.fid import frechet_distance
from speedrun.eval.mmd import mmd

DIM = 2048
SAMPLES = 3000


@pytest.fixture(scope="module")
def statistics_2048() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    stats = []
    for shift in (0.0, 0.05):
        x = rng.normal(size=(SAMPLES, DIM)) * rng.uniform(0.5, 2.0, size=DIM) + shift
        x += rng.normal(size=(SAMPLES, 8)) @ rng.normal(size=(8, DIM))
        stats += [x.mean(axis=0), np.cov(x, rowvar=False)]
    return tuple(stats)


def _cleanfid(mu1, sigma1, mu2, sigma2) -> float:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(cleanfid_frechet_distance(mu1, sigma1, mu2, sigma2))


@pytest.mark.benchmark(group="fd-2048")
def test_fd_2048_ours(benchmark, statistics_2048) -> None:
    value = benchmark.pedantic(frechet_distance, args=statistics_2048, rounds=3, iterations=1)
    benchmark.extra_info.update(value=value, cpus=os.cpu_count())


@pytest.mark.benchmark(group="fd-2048")
def test_fd_2048_scipy_sqrtm(benchmark, statistics_2048) -> None:
    value = benchmark.pedantic(_cleanfid, args=statistics_2048, rounds=1, iterations=1)
    benchmark.extra_info.update(value=value, ours=frechet_distance(*statistics_2048))
    assert value == pytest.approx(benchmark.extra_info["ours"], rel=1e-6)


@pytest.mark.benchmark(group="mmd-memory")
def test_mmd_20000_x_768_peak_memory(benchmark) -> None:
    rng = np.random.default_rng(1)
    n, d, block = 20_000, 768, 1024
    x = rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = x[::-1] * 0.9 + 0.1 * rng.normal(size=(n, d)) / np.sqrt(d)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    peaks = []

    def measured() -> float:
        tracemalloc.start()
        try:
            return mmd(x, y, block=block)
        finally:
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()

    value = benchmark.pedantic(measured, rounds=1, iterations=1)
    dense_bytes = n * n * 8
    benchmark.extra_info.update(value=value, peak_bytes=peaks[0], dense_matrix_bytes=dense_bytes, block=block)
    assert peaks[0] < 8 * block * block * 8, f"peak {peaks[0]} bytes"
