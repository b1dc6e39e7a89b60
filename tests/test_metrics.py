"""``speedrun.metrics``: one registry, which the tracks and the evaluator both read."""

from __future__ import annotations

from speedrun.metrics import METRICS
from speedrun.tracks import load_track


def test_every_metric_loads_and_the_smoke_track_runs_them_all() -> None:
    """CI's smoke runs evaluate every registered metric end to end (random-init networks)."""
    for name, metric in METRICS.items():
        assert metric.name == name and callable(metric.load())
    assert set(load_track("smoke").eval.metrics) == set(METRICS)
