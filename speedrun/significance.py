"""What the leaderboard may call a difference. Seed ``s`` of every entry shares data order, initial weights,
training noise and evaluation noise with seed ``s`` of the baseline, so entries made in one setup (machine model,
torch build) are compared on per-seed differences (a paired t-test), which cancels the noise they share; a
difference counts at p < ``ALPHA``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

ALPHA = 0.01  # two-sided significance level of every comparison shown as real
POWER = 0.8  # of the minimum detectable effect
CONFIDENCE = 0.95  # of the half-widths shown beside means


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% half-width ``t_{0.975,n-1} s / sqrt(n)`` (ddof=1); NaN mean for no values, NaN width for one."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return (float(x[0]) if x.size else math.nan), math.nan
    return float(x.mean()), float(stats.t.ppf(0.5 + CONFIDENCE / 2, x.size - 1) * stats.sem(x))


@dataclass(frozen=True)
class Paired:
    """``a - b`` over the seeds both have: mean difference, two-sided paired t-test p-value, pair count."""

    delta: float
    p: float
    n: int

    @property
    def significant(self) -> bool:
        return self.p < ALPHA  # False for NaN


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> Paired:
    """Compare per-seed values ``a`` and ``b`` (seed -> value) on their common seeds. p is NaN under two
    pairs or when the differences do not vary (scipy's p 0 from an infinite t is no evidence from ties)."""
    d = np.array([a[s] - b[s] for s in sorted(set(a) & set(b))], np.float64)
    delta = float(d.mean()) if d.size else math.nan
    if d.size < 2 or np.ptp(d) == 0:
        return Paired(delta, math.nan, d.size)
    return Paired(delta, float(stats.ttest_1samp(d, 0.0).pvalue), d.size)


def pooled_sd(differences: Sequence[Sequence[float]]) -> float:
    """The standard deviation of per-seed differences pooled over comparisons (each around its own mean,
    so a real effect does not inflate it); NaN without a comparison of two seeds or more."""
    groups = [np.asarray(d, np.float64) for d in differences if len(d) >= 2]
    dof = sum(g.size - 1 for g in groups)
    return math.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / dof) if dof else math.nan


def min_detectable_effect(sd: float, n: int) -> float:
    """The smallest true mean difference a two-sided paired t-test over ``n`` seeds detects at level
    ``ALPHA`` with probability ``POWER``, for differences of standard deviation ``sd`` (exact, by the
    noncentral t distribution); NaN for n < 2 or an unknown sd."""
    if n < 2 or not math.isfinite(sd) or sd <= 0:
        return math.nan
    df, critical = n - 1, stats.t.ppf(1 - ALPHA / 2, n - 1)

    def shortfall(shift: float) -> float:  # shift: the noncentrality, effect sqrt(n) / sd
        return stats.nct.sf(critical, df, shift) + stats.nct.sf(critical, df, -shift) - POWER

    upper = critical  # power is about 1/2 there; doubling stays where scipy's nct is finite
    while shortfall(upper) < 0:
        upper *= 2
    return float(optimize.brentq(shortfall, 0.0, upper, xtol=1e-12)) * sd / math.sqrt(n)


def shared_ranks(order: Sequence[str], differ: Callable[[str, str], bool]) -> list[int]:
    """Competition ranks (1, 1, 3, ...) for entries sorted best first: an entry opens a new rank only when
    ``differ(leader, entry)`` says it is significantly worse than the first entry of the current rank."""
    ranks: list[int] = []
    leader = None
    for i, name in enumerate(order):
        if leader is None or differ(leader, name):
            leader, rank = name, i + 1
        ranks.append(rank)
    return ranks
