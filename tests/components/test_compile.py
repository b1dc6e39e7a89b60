"""Built-in components under torch.compile, which the GPU trainer wraps the denoiser in.

Dynamo alone (backend "eager": traced, not compiled) shows what inductor would get: the frames it
compiles and where the graph breaks. A hook that makes dynamo specialise on the step number would
recompile the denoiser every step until the recompile limit, then run it uncompiled; these tests
catch that on CPU.
"""

from __future__ import annotations

import functools

import pytest
import torch
from component_helpers import make_batch, make_ctx
from torch._dynamo.utils import counters

from speedrun.components import StepState
from speedrun.components.repa import REPA, REPAParams
from speedrun.components.tread import TREAD, TREADParams
from speedrun.protocol import collect_hooks

WARM_STEPS = 2  # routed and full token counts are each traced once in the first steps
STEPS = 6


def build(ctx, kind: str):
    if kind == "baseline":
        return []
    if kind == "tread":
        comp = TREAD(TREADParams(keep=0.5))
    else:  # REPA with a stop step beyond the run: its hook compares the step on every forward
        comp = REPA(REPAParams(layer=2, projector_dim=8, stop_step=1000, random_init_teacher=True))
    comp.setup(ctx)
    return [comp]


@functools.cache  # each kind is traced once for both tests
def traced_frames(kind: str) -> tuple[int, int, dict[str, int]]:
    """(frames traced in the warm steps, frames traced after them, graph break reasons)."""
    ctx = make_ctx("smoke")
    hooks = collect_hooks(build(ctx, kind), ctx.model.config.depth)
    batch, x_t, t = make_batch(ctx, b=2)
    torch._dynamo.reset()
    counters.clear()
    model = torch.compile(ctx.model, backend="eager")
    warm = 0
    for step in range(STEPS):
        if step == WARM_STEPS:
            warm = counters["frames"]["total"]
        state = StepState(step=step, seed=0, rank=0, training=True, x_t=x_t, t=t)
        model(x_t, t, batch.text, batch.text_mask, hooks=hooks, state=state)
    later = counters["frames"]["total"] - warm
    breaks = {reason.splitlines()[0]: n for reason, n in counters["graph_break"].items()}
    torch._dynamo.reset()
    return warm, later, breaks


@pytest.mark.parametrize("kind", ["baseline", "tread", "repa"])
def test_no_recompiles_as_the_step_advances(kind):
    warm, later, _ = traced_frames(kind)
    assert warm >= 1
    assert later == 0, f"{kind}: dynamo traced {later} more frames after step {WARM_STEPS}"


def test_graph_breaks_only_at_tread_routing_draw():
    assert traced_frames("baseline")[2] == {}
    assert traced_frames("repa")[2] == {}
    breaks = traced_frames("tread")[2]
    assert list(breaks) == ["Skip calling `torch.compiler.disable()`d function"], breaks
