"""TREAD: token routing. A random share of image tokens skips a span of blocks and rejoins after it.

Per training step and sample, ``round(keep * N)`` of the N image tokens, drawn from a CPU generator seeded
by ``(seed, step, rank)`` (the same on every run and device), go through blocks ``start..end`` (1-based) in
grid order with their RoPE positions; the rest rejoin after ``end``. At evaluation every token is used."""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from speedrun.errors import SpeedrunError
from speedrun.flow import keyed_generator
from speedrun.model import MODEL_CONFIGS
from speedrun.protocol import Component, ComponentContext, Params, StepState

# TREAD/PRX route from block 2 through block 12 of 16; shallower denoisers get the same proportions.
DEFAULT_SPAN_OF_16 = (2, 12)
FULL_TOKENS = "tread:full"


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def kept_count(keep: float, n: int) -> int:
    """Tokens kept out of ``n``: ``round(keep * n)`` with halves rounded up."""
    return round_half_up(keep * n)


def routing_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The CPU generator of ``(seed, step, rank)``'s routing."""
    return keyed_generator(f"tread:{seed}:{step}:{rank}")


def routing_index(batch: int, n: int, keep: int, generator: torch.Generator) -> torch.Tensor:
    """``(batch, keep)`` sorted token indices: per row the top ``keep`` of ``n`` uniform draws."""
    noise = torch.rand(batch, n, generator=generator)
    return noise.topk(keep, dim=1).indices.sort(dim=1).values


# Compiled, the hash and generator would recompile for every step number; eager, reading ints off the
# state object (not guarded on), this costs one graph break per forward and no recompiles.
@torch.compiler.disable(reason="TREAD draws its routing from a CPU generator seeded by a hash")
def step_routing_index(state: StepState, batch: int, n: int, keep: int, device: torch.device) -> torch.Tensor:
    """The routing of this forward: ``routing_index`` drawn for ``(state.seed, state.step, state.rank)``."""
    index = routing_index(batch, n, keep, routing_generator(state.seed, state.step, state.rank))
    if device.type == "cuda":
        # A pageable copy would wait mid-forward for the queued blocks; a pinned one is queued too.
        return index.pin_memory().to(device, non_blocking=True)
    return index.to(device)


class TREADParams(Params):
    keep: float = Field(0.5, gt=0, le=1, description="Share of image tokens that go through the span.")
    start: int | None = Field(None, ge=1, description="First routed block (1-based); None: 2 of 16, scaled.")
    end: int | None = Field(None, ge=1, description="Last routed block (1-based); None: 12 of 16, scaled.")


def resolve_span(start: int | None, end: int | None, depth: int) -> tuple[int, int]:
    """1-based inclusive ``(start, end)``; None: ``round(depth * 2/16)`` (>= 1), ``round(depth * 12/16)`` (>= start)."""
    s = start if start is not None else max(1, round_half_up(depth * DEFAULT_SPAN_OF_16[0] / 16))
    e = end if end is not None else max(s, round_half_up(depth * DEFAULT_SPAN_OF_16[1] / 16))
    if not 1 <= s <= e <= depth:
        raise SpeedrunError(f"component 'tread': blocks start={s} .. end={e} must satisfy 1 <= start <= end <= {depth} "
                            "(the denoiser's depth)")  # fmt: skip
    return s, e


class TREAD(Component):
    """Token routing over blocks ``start..end`` (Krause et al. 2025)."""

    name = "tread"
    Params = TREADParams
    params: TREADParams

    @classmethod
    def check(cls, params: TREADParams, track: Any) -> None:
        resolve_span(params.start, params.end, MODEL_CONFIGS[track.model.config]().depth)

    def setup(self, ctx: ComponentContext) -> None:
        self.start, self.end = resolve_span(self.params.start, self.params.end, ctx.model.config.depth)
        (rows, cols), keep = ctx.token_grid, self.params.keep
        if kept_count(keep, rows * cols) < 1:
            raise SpeedrunError(f"component 'tread': keep={keep} keeps none of the {rows * cols} image tokens of the "
                                f"{rows}x{cols} token grid (round(keep * {rows * cols}) = 0); raise keep")  # fmt: skip

    def route(self, tokens: torch.Tensor, state: StepState) -> torch.Tensor:
        if not state.training:
            return tokens
        if state.token_index is not None:
            raise SpeedrunError("component 'tread': the image tokens are already routed by another component")
        b, n, hidden = tokens.shape
        state.token_index = index = step_routing_index(state, b, n, kept_count(self.params.keep, n), tokens.device)
        state.records[FULL_TOKENS] = tokens
        return tokens.gather(1, index[..., None].expand(-1, -1, hidden))

    def restore(self, tokens: torch.Tensor, state: StepState) -> torch.Tensor:
        if FULL_TOKENS not in state.records:  # evaluation: nothing was routed
            return tokens
        full, index, state.token_index = state.records.pop(FULL_TOKENS), state.token_index, None
        # Under autocast the stream's dtype may differ before and after the span; keep the later one.
        return full.to(tokens.dtype).scatter(1, index[..., None].expand(-1, -1, tokens.shape[-1]), tokens)

    def hooks(self):
        first, last = self.start - 1, self.end - 1
        if first == last:
            return {first: (self.route, self.restore)}
        return {first: (self.route, None), last: (None, self.restore)}
