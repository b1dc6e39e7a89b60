"""The speedrun number: how much sooner an entry reaches the baseline's score. Seed ``s``'s target is the
baseline seed ``s``'s final value of the ranking metric; each side reaches it at the first step its curve
crosses it (linear between evaluations), and the ratio of those steps (or of steps x seconds per step, for
wall-clock) is averaged over seeds in log space, with a t interval: a ratio of 2 is "2x sooner"."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from speedrun.significance import mean_ci

Curve = Sequence[tuple[float, float]]  # (step, value) in step order


def steps_to_reach(curve: Curve, target: float, lower: bool) -> tuple[float, bool] | None:
    """The first step at which ``curve`` reaches ``target`` (at or below it when ``lower``), interpolated
    linearly from the evaluation before, and whether it was (False: the first evaluation had already
    reached it, so the step is an upper bound); None if it never does."""
    for i, (step, value) in enumerate(curve):
        if value <= target if lower else value >= target:
            if i == 0:
                return float(step), False
            s0, v0 = curve[i - 1]
            return s0 + (step - s0) * (target - v0) / (value - v0), True
    return None


@dataclass(frozen=True)
class Speedup:
    """Geometric-mean ratios over seeds (baseline / entry: > 1 is faster) with their 95% intervals, lower
    bounds only when ``at_least`` (the entry reached the target by its first evaluation on some seed), or
    the seeds on which the entry never reached its target."""

    steps: tuple[float, float, float]  # mean, low, high
    wall: tuple[float, float, float]
    at_least: bool = False
    unreached: tuple[int, ...] = ()


def _log_mean_ci(ratios: list[float]) -> tuple[float, float, float]:
    mean, half = mean_ci(np.log(ratios))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def speedup(
    entry: Mapping[int, Curve], baseline: Mapping[int, Curve], entry_sps: Mapping[int, float],
    baseline_sps: Mapping[int, float], lower: bool,
) -> Speedup | None:  # fmt: skip
    """Per seed both have: curves of the ranking metric and seconds per step; None without a common seed."""
    seeds = sorted(s for s in set(entry) & set(baseline) if entry[s] and baseline[s] and s in entry_sps)
    if not seeds:
        return None
    target = {s: baseline[s][-1][1] for s in seeds}
    reached = {s: steps_to_reach(entry[s], target[s], lower) for s in seeds}
    if unreached := tuple(s for s in seeds if reached[s] is None):
        return Speedup((math.nan,) * 3, (math.nan,) * 3, unreached=unreached)
    # The baseline reaches its own final value by its last evaluation: its step is exact or an upper bound.
    base = {s: steps_to_reach(baseline[s], target[s], lower)[0] for s in seeds}
    steps = [base[s] / reached[s][0] for s in seeds]
    wall = [base[s] * baseline_sps[s] / (reached[s][0] * entry_sps[s]) for s in seeds]
    return Speedup(_log_mean_ci(steps), _log_mean_ci(wall), at_least=not all(reached[s][1] for s in seeds))
