"""``speedrun.significance`` against scipy, simulation and the case it exists for: shared seed noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from speedrun.significance import ALPHA, min_detectable_effect, paired, pooled_sd, shared_ranks


def test_paired_test_finds_a_small_difference_that_welch_misses() -> None:
    """Two entries whose seeds share large noise (sd 15, as tiny's FID) and differ by a fixed 3%: the
    paired test separates them at p < 0.01, Welch's test on the same numbers cannot."""
    rng = np.random.default_rng(0)
    shared = 220 + 15 * rng.standard_normal(5)
    baseline = dict(enumerate(shared + 0.5 * rng.standard_normal(5)))
    entry = dict(enumerate(shared * 0.97 + 0.5 * rng.standard_normal(5)))
    vs = paired(entry, baseline)
    assert vs.n == 5 and vs.significant and vs.delta < 0
    assert vs.p == pytest.approx(stats.ttest_rel(list(entry.values()), list(baseline.values())).pvalue, rel=1e-12)
    welch = stats.ttest_ind(list(entry.values()), list(baseline.values()), equal_var=False).pvalue
    assert welch > 0.1


def test_paired_uses_common_seeds_and_refuses_ties() -> None:
    vs = paired({0: 1.0, 1: 2.0, 2: 4.0}, {0: 0.0, 2: 1.0, 7: 9.0})
    assert (vs.n, vs.delta) == (2, 2.0) and vs.p == pytest.approx(stats.ttest_rel([1, 4], [0, 1]).pvalue)
    # scipy would give p 0 (an infinite t) for differences that do not vary: two tying seeds are no evidence.
    assert math.isnan(paired({0: 1.0, 1: 2.0}, {0: 0.0, 1: 1.0}).p)
    assert math.isnan(paired({0: 1.0}, {0: 0.0}).p) and paired({0: 1.0}, {1: 0.0}).n == 0


def test_minimum_detectable_effect_has_the_stated_power() -> None:
    """Simulated paired t-tests at the computed effect reject at p < ALPHA about 80% of the time."""
    sd, n = 3.0, 5
    effect = min_detectable_effect(sd, n)
    rng = np.random.default_rng(1)
    differences = effect + sd * rng.standard_normal((40_000, n))
    t = differences.mean(axis=1) / (differences.std(axis=1, ddof=1) / math.sqrt(n))
    power = np.mean(2 * stats.t.sf(np.abs(t), n - 1) < ALPHA)
    assert power == pytest.approx(0.8, abs=0.01)
    # More seeds detect less; the normal approximation (z_{1-a/2} + z_{0.8}) sd / sqrt(n) is a lower bound.
    assert min_detectable_effect(sd, 10) < effect
    assert effect > (stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(0.8)) * sd / math.sqrt(n)
    assert math.isnan(min_detectable_effect(sd, 1)) and math.isnan(min_detectable_effect(math.nan, 5))


def test_pooled_sd_ignores_each_comparisons_own_mean() -> None:
    a, b = [10.0, 12.0, 14.0], [-1.0, 1.0]
    expected = math.sqrt((np.var(a, ddof=1) * 2 + np.var(b, ddof=1)) / 3)
    assert pooled_sd([a, b, [5.0]]) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(pooled_sd([[1.0]]))


def test_shared_ranks_open_a_rank_only_at_a_significant_gap() -> None:
    apart = {("a", "c"), ("b", "d"), ("a", "d")}
    assert shared_ranks(["a", "b", "c", "d"], lambda x, y: (x, y) in apart) == [1, 1, 3, 3]
    assert shared_ranks(["a", "b"], lambda x, y: False) == [1, 1]
