"""The evaluator's metrics, one registry: a ``Metric`` names its direction, what it reads, and the function
that computes it. Importing this module loads no torch: tracks validate their metrics and ranking against it,
and the evaluator loads ``compute`` when an evaluation runs."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Literal


@dataclass(frozen=True)
class Metric:
    """``compute`` is ``"module:function"``, called as ``function(inputs, report, name)`` with the evaluation's
    ``speedrun.eval.scores.EvalInputs``; it writes its value into ``report["metrics"][name]`` (None with a
    reason in ``report["unavailable"]``) and whatever identifies its reference into the other sections.
    ``lower``: the least value it can take (None: any finite value); a result below it is refused."""

    name: str
    direction: Literal["min", "max"]
    reads: Literal["images", "images and prompts", "denoiser"]
    compute: str
    lower: float | None

    def load(self) -> Callable[[Any, dict[str, dict], str], None]:
        module, function = self.compute.split(":")
        return getattr(importlib.import_module(module), function)


METRICS = {
    m.name: m
    for m in (
        Metric("fid", "min", "images", "speedrun.eval.scores:feature_distance", lower=0.0),
        # MMD^2 (eval/mmd.py) is a squared norm, >= 0 in exact arithmetic, yet its float64 sum of kernel terms
        # can land a few ulps below 0 for near-identical sets: no lower bound a correct evaluation could cross.
        Metric("cmmd", "min", "images", "speedrun.eval.scores:feature_distance", lower=None),
        Metric("dino_mmd", "min", "images", "speedrun.eval.scores:feature_distance", lower=None),
        Metric("val_loss", "min", "denoiser", "speedrun.eval.scores:val_loss", lower=0.0),
        Metric("prompt_adherence", "max", "images and prompts", "speedrun.eval.scores:prompt_adherence", lower=0.0),
    )
}
