"""TREAD: token routing. A random share of image tokens skips a span of blocks and rejoins after it.

Per training step and sample, ``round(keep * N)`` of the N image tokens are kept (top-k over uniform
noise); before block ``start`` (1-based) only those tokens go on, in grid order, with their RoPE
positions (``StepState.token_index``); after block ``end`` the processed tokens are scattered back
into the full set saved at ``start``, so the routed tokens carry their pre-``start`` values across
the span. At evaluation (``state.training`` False) every token is used and nothing changes.

The noise comes from a CPU ``torch.Generator`` seeded by a hash of ``(seed, step, rank)``: the
routing of a step is the same on every run and device, differs between steps and between ranks
(which hold different samples). ``round`` rounds halves up.
"""

from __future__ import annotations

import hashlib
import math

import torch
from pydantic import Field

from speedrun.components.base import Component, ComponentContext, Params
from speedrun.errors import SpeedrunError
from speedrun.state import StepState

# TREAD/PRX route from block 2 through block 12 of 16; shallower denoisers get the same proportions.
DEFAULT_SPAN_OF_16 = (2, 12)
FULL_TOKENS = "tread:full"


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def kept_count(keep: float, n: int) -> int:
    """Tokens kept out of ``n``: ``round(keep * n)`` with halves rounded up."""
    return round_half_up(keep * n)


def routing_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """A CPU generator for ``(seed, step, rank)``; hashed because the CPU generator uses 32 seed bits."""
    digest = hashlib.sha256(f"tread:{seed}:{step}:{rank}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:4], "little"))


def routing_index(batch: int, n: int, keep: int, generator: torch.Generator) -> torch.Tensor:
    """``(batch, keep)`` sorted token indices: per row the top ``keep`` of ``n`` uniform draws."""
    noise = torch.rand(batch, n, generator=generator)
    return noise.topk(keep, dim=1).indices.sort(dim=1).values


# Under torch.compile (the GPU trainer) dynamo cannot trace the hash or the generator: it would break
# the graph inside this function and recompile it for every new step number until its recompile
# limit. Drawing eagerly, with the state object read here rather than its ints passed in (which the
# compiled caller would guard on), costs one graph break per forward and no recompiles.
@torch.compiler.disable(reason="TREAD draws its routing from a CPU generator seeded by a hash")
def step_routing_index(state: StepState, batch: int, n: int, keep: int, device: torch.device) -> torch.Tensor:
    """The routing of this forward: ``routing_index`` drawn for ``(state.seed, state.step, state.rank)``."""
    index = routing_index(batch, n, keep, routing_generator(state.seed, state.step, state.rank))
    if device.type == "cuda":
        # From pinned memory the copy is queued: a pageable one would wait, mid-forward, for the
        # blocks already queued, and the GPU would idle while the rest of the step is launched.
        return index.pin_memory().to(device, non_blocking=True)
    return index.to(device)


class TREADParams(Params):
    keep: float = Field(0.5, gt=0, le=1, description="Share of image tokens that go through the span.")
    start: int | None = Field(None, ge=1, description="First routed block (1-based); None: 2 of 16, scaled.")
    end: int | None = Field(None, ge=1, description="Last routed block (1-based); None: 12 of 16, scaled.")


def resolve_span(start: int | None, end: int | None, depth: int) -> tuple[int, int]:
    """``(start, end)`` 1-based and inclusive: given values checked, defaults ``round(depth * 2/16)``
    and ``round(depth * 12/16)`` (at least block 1, and end at least start)."""
    s = start if start is not None else max(1, round_half_up(depth * DEFAULT_SPAN_OF_16[0] / 16))
    e = end if end is not None else max(s, round_half_up(depth * DEFAULT_SPAN_OF_16[1] / 16))
    if not 1 <= s <= e <= depth:
        raise SpeedrunError(
            f"component 'tread': blocks start={s} .. end={e} must satisfy 1 <= start <= end <= {depth} "
            "(the denoiser's depth)"
        )
    return s, e


class TREAD(Component):
    """Token routing over blocks ``start..end`` (Krause et al. 2025)."""

    name = "tread"
    Params = TREADParams
    params: TREADParams

    def setup(self, ctx: ComponentContext) -> None:
        self.start, self.end = resolve_span(self.params.start, self.params.end, ctx.model.config.depth)

    def route(self, tokens: torch.Tensor, state: StepState) -> torch.Tensor:
        if not state.training:
            return tokens
        if state.token_index is not None:
            raise SpeedrunError("component 'tread': the image tokens are already routed by another component")
        b, n, hidden = tokens.shape
        keep = kept_count(self.params.keep, n)
        if keep < 1:
            raise SpeedrunError(f"component 'tread': keep={self.params.keep} of {n} tokens keeps none")
        index = step_routing_index(state, b, n, keep, tokens.device)
        state.records[FULL_TOKENS] = tokens
        state.token_index = index
        return tokens.gather(1, index[..., None].expand(-1, -1, hidden))

    def restore(self, tokens: torch.Tensor, state: StepState) -> torch.Tensor:
        if FULL_TOKENS not in state.records:
            return tokens
        full = state.records.pop(FULL_TOKENS)
        index = state.token_index
        if index is None or index.shape != tokens.shape[:2]:
            raise SpeedrunError("component 'tread': the routed token set changed inside the span")
        state.token_index = None
        # Under autocast the stream's dtype may differ before and after the span; keep the later one.
        return full.to(tokens.dtype).scatter(1, index[..., None].expand(-1, -1, tokens.shape[-1]), tokens)

    def hooks(self):
        first, last = self.start - 1, self.end - 1
        if first == last:
            return {first: (self.route, self.restore)}
        return {first: (self.route, None), last: (None, self.restore)}
