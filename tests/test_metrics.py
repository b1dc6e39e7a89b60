"""``speedrun.metrics``: one registry, which the tracks and the evaluator both read."""

from __future__ import annotations

import pytest

from speedrun.metrics import METRICS, Metric, _registry
from speedrun.tracks import load_track


def test_every_metric_loads_and_the_smoke_track_runs_them_all() -> None:
    """CI's smoke runs evaluate every registered metric end to end (random-init networks)."""
    for name, metric in METRICS.items():
        assert metric.name == name and callable(metric.load())
    assert set(load_track("smoke").eval.metrics) == set(METRICS)


def test_a_metric_registered_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="metric 'fid' is registered twice"):
        _registry(METRICS["fid"], Metric("fid", "max", "images", "speedrun.eval.scores:feature_distance", 0.0))
