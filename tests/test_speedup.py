"""``speedrun.speedup``: steps and wall-clock to the baseline's score, per paired seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from speedrun.speedup import speedup, steps_to_reach

BASE = [(100, 9.0), (200, 6.0), (300, 5.0), (400, 4.0)]


def test_steps_to_reach_interpolates_between_evaluations() -> None:
    assert steps_to_reach(BASE, 5.5, lower=True) == (250.0, True)
    assert steps_to_reach(BASE, 4.0, lower=True) == (400.0, True)
    assert steps_to_reach(BASE, 9.5, lower=True) == (100.0, False)  # already there at the first evaluation
    assert steps_to_reach(BASE, 3.0, lower=True) is None
    rising = [(s, -v) for s, v in BASE]
    assert steps_to_reach(rising, -5.5, lower=False) == (250.0, True)


def test_an_entry_twice_as_fast_in_steps_is_2x_and_its_slower_steps_count_in_wall_clock() -> None:
    """On each seed the entry's curve is the baseline's at half the steps, with steps 1.6x longer."""
    baseline = {s: [(step, v + s) for step, v in BASE] for s in range(3)}
    entry = {s: [(step / 2, v) for step, v in curve] + [(400, curve[-1][1] - 1)] for s, curve in baseline.items()}
    found = speedup(entry, baseline, {s: 1.6 for s in range(3)}, {s: 1.0 for s in range(3)}, lower=True)
    assert found.steps == pytest.approx((2.0, 2.0, 2.0)) and not found.at_least and not found.unreached
    assert found.wall == pytest.approx((2.0 / 1.6,) * 3)


def test_ratios_average_in_log_space_with_a_t_interval() -> None:
    baseline = {s: BASE for s in range(4)}
    targets = [150.0, 300.0, 250.0, 400.0]  # where each seed's entry reaches 4.0
    entry = {s: [(t / 2, 4.5), (t, 4.0)] for s, t in enumerate(targets)}
    found = speedup(entry, baseline, dict.fromkeys(range(4), 1.0), dict.fromkeys(range(4), 1.0), lower=True)
    logs = np.log([400 / t for t in targets])
    low, high = stats.t.interval(0.95, 3, loc=logs.mean(), scale=stats.sem(logs))
    assert found.steps == pytest.approx((math.exp(logs.mean()), math.exp(low), math.exp(high)), rel=1e-12)


def test_an_entry_that_never_reaches_the_target_says_on_which_seeds() -> None:
    baseline = {0: BASE, 1: BASE}
    entry = {0: [(400, 3.0)], 1: [(400, 4.5)]}
    found = speedup(entry, baseline, {0: 1.0, 1: 1.0}, {0: 1.0, 1: 1.0}, lower=True)
    assert found.unreached == (1,)
    assert speedup(entry, {}, {}, {}, lower=True) is None
    bound = speedup({0: [(400, 3.0)]}, {0: BASE}, {0: 1.0}, {0: 1.0}, lower=True)
    assert bound.at_least and bound.steps[0] == 1.0
