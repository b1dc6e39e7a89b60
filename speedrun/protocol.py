"""The component protocol: the only thing the trainer knows about training techniques (REPA, TREAD, ...).

The trainer builds each manifest entry from its ``Params``, calls ``setup`` once, installs its block hooks
through :func:`collect_hooks` (which checks the hook contract), adds its loss terms, and lets at most one
replace the objective. A leaf of the harness; a broken contract raises :class:`ContractError`, the user's error."""

from __future__ import annotations

import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

if TYPE_CHECKING:
    from speedrun.flow import Objective

PredictionKind = Literal["velocity", "x0"]
"""What a network outputs: a velocity, or the clean sample x0 (see :mod:`speedrun.flow`)."""

BlockHook = Callable[[torch.Tensor, "StepState"], torch.Tensor]
"""``hook(tokens, state) -> tokens``: run before or after a block on the image tokens (B, N, hidden)."""

# ``StepState.records`` key holding (who routed, full token count) while image tokens are routed.
ROUTING = "speedrun:routing"


class ContractError(Exception):
    """A component broke this protocol, or cannot run on the track it was given."""


@dataclass
class StepState:
    """What one forward pass knows beyond its tensors. ``step`` is -1 at evaluation (``training`` False, no
    routing); components derive their RNG from (``seed``, ``step``, ``rank``). ``x_t`` (B, C, H, W) and ``t``
    (B,) are the noisy input and times. ``token_index`` (B, N_kept) indexes the row-major grid tokens now
    flowing through the blocks (None: all, in order), set and cleared by routing hooks. ``records`` is
    where hooks leave activations for the losses."""

    step: int = -1
    seed: int = 0
    rank: int = 0
    training: bool = False
    x_t: torch.Tensor | None = None
    t: torch.Tensor | None = None
    prediction: PredictionKind = "velocity"
    token_index: torch.Tensor | None = None
    records: dict[str, Any] = field(default_factory=dict)


class Params(BaseModel):
    """Base for component parameters: frozen, strict (TOML strings are never coerced), unknown keys are
    errors; no nan or inf (they pass one-sided bounds and results JSON would record them as null)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


@dataclass
class ComponentContext:
    """What ``Component.setup`` may touch: the denoiser (read its ``config``, never replace modules), the
    track, device, seed, ``token_grid`` (rows, columns of image tokens) and ``data_dir``, the prepared
    dataset's folder (where a teacher ``prepare`` trained lives; None when the trainer gives none).
    ``add_trainable`` modules join the optimizer and are saved as ``components.<name>.*``, unused at
    evaluation; ``add_frozen`` ones (teachers) get no grad and are never saved, and their ``id`` attribute
    (else their class name) is recorded in the results as ``provenance.teachers``."""

    model: nn.Module
    track: Any
    device: torch.device
    seed: int
    token_grid: tuple[int, int]
    images_available: bool
    data_dir: Path | None = None
    trainable: dict[str, nn.Module] = field(default_factory=dict)
    frozen: dict[str, nn.Module] = field(default_factory=dict)
    uses_images: bool = False

    def use_images(self, component: str) -> None:
        """Ask for the real train images (``TrainBatch.images_uint8``) every step; refused if the track has none."""
        if not self.images_available:
            raise ContractError(
                f"component '{component}' needs the real images (its teacher reads pixels), but track "
                f"'{self.track.id}' trains on '{self.track.data.representation}' latents without keeping the "
                "train images (data.train_images = false)"
            )
        self.uses_images = True

    def add_trainable(self, name: str, module: nn.Module) -> nn.Module:
        return self._add(self.trainable, name, module.to(self.device))

    def add_frozen(self, name: str, module: nn.Module) -> nn.Module:
        return self._add(self.frozen, name, module.to(self.device).eval().requires_grad_(False))

    def _add(self, table: dict[str, nn.Module], name: str, module: nn.Module) -> nn.Module:
        if name in self.trainable or name in self.frozen:
            raise ContractError(f"component module '{name}' registered twice")
        table[name] = module
        return module


@dataclass
class TrainBatch:
    """One training batch in model space, on the device; ``images_uint8`` (B, H, W, 3) are the real
    train images when a component asked with ``ComponentContext.use_images``, else None."""

    x0: torch.Tensor
    noise: torch.Tensor
    text: torch.Tensor
    text_mask: torch.Tensor
    images_uint8: torch.Tensor | None = None


class Component:
    """Base class of every training technique: set ``name`` (the manifest key) and ``Params``, and
    override what you need of ``setup``, ``hooks``, ``losses`` and ``objective`` (each does nothing)."""

    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: Params) -> None:
        self.params = params

    @classmethod
    def check(cls, params: Params, track: Any) -> None:
        """Raise an error naming the parameter when ``params`` cannot run on ``track``'s model or data (a
        block beyond its depth); called by ``speedrun validate`` for every targeted track, before any training."""

    def setup(self, ctx: ComponentContext) -> None:
        """Register trainable heads and frozen teachers on ``ctx``; called once before training."""

    def hooks(self) -> dict[int, tuple[BlockHook | None, BlockHook | None]]:
        """``{block_index (0-based): (before, after)}``; each hook maps (tokens, state) -> tokens of the
        input's dtype, device and shape (B, N, hidden), except that a hook setting ``state.token_index``
        returns exactly the tokens it names and the one clearing it every image token; every routing ends
        by the end of the last block."""
        return {}

    def losses(self, batch: TrainBatch, prediction: torch.Tensor, state: StepState) -> dict[str, torch.Tensor]:
        """Named, weighted scalar loss terms added to the objective's loss; each name becomes a column of
        the training log, so it may not be one of the trainer's own (``loss``, ``loss_fm``, ``lr``, ...)."""
        return {}

    def objective(self) -> Objective | None:
        """A replacement training objective, or None to keep the track's."""
        return None


def label(comp: Component) -> str:
    return f"component '{comp.name}' ({type(comp).__qualname__})"


def collect_hooks(components: list[Component], depth: int) -> dict[int, list[tuple[Any, Any]]]:
    """The components' hooks by block, in manifest order, each ``_checked``, then one refusing tokens left routed."""
    hooks: dict[int, list[tuple[Any, Any]]] = {}
    for comp in components:
        who, table = label(comp), comp.hooks()
        if not isinstance(table, dict):
            raise ContractError(f"{who}: hooks() must return a dict {{block_index: (before, after)}}, got "
                                f"{type(table).__name__}")  # fmt: skip
        for index, pair in table.items():
            # bool is an int, and a negative or too large index would match no block: the hook never runs
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < depth:
                raise ContractError(f"{who}: hooks() key {reprlib.repr(index)} is not a block index of the "
                                    f"denoiser's {depth} blocks (0..{depth - 1})")  # fmt: skip
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(h is None or callable(h) for h in pair)):
                raise ContractError(f"{who}: hooks()[{index}] must be a (before, after) pair of hooks or None, "
                                    f"got {reprlib.repr(pair)}")  # fmt: skip
            hooks.setdefault(index, []).append(tuple(
                None if h is None else _checked(h, f"{who}, {p} hook of block index {index}")
                for p, h in zip(("before", "after"), pair)
            ))  # fmt: skip
    if hooks:
        hooks.setdefault(depth - 1, []).append((None, _all_tokens_back))
    return hooks


def _checked(hook: BlockHook, who: str) -> BlockHook:
    """``hook`` with its output checked against ``Component.hooks``' contract (metadata only, no sync)."""

    def run(tokens: torch.Tensor, state: StepState) -> torch.Tensor:
        was_routed = state.token_index is not None
        out = hook(tokens, state)
        index = state.token_index
        if index is not None:
            if not was_routed:  # the tokens had their full count until this hook
                state.records[ROUTING] = (who, tokens.shape[1])
            count = index.shape[1]
        else:
            count = state.records.pop(ROUTING)[1] if was_routed else tokens.shape[1]
        if not isinstance(out, torch.Tensor):
            raise ContractError(f"{who} returned {type(out).__name__}, not a tensor of image tokens")
        expected = (tokens.shape[0], count, tokens.shape[2])
        if out.shape != expected:
            if index is not None:
                rule = f"state.token_index keeps {count} tokens"
            elif was_routed:
                rule = f"routing ended (state.token_index None): every one of the {count} image tokens must come back"
            else:
                rule = "a hook that does not route keeps the input's shape"
            raise ContractError(f"{who} returned tokens of shape {tuple(out.shape)}, expected {expected}; {rule}")
        if out.dtype != tokens.dtype or out.device != tokens.device:
            raise ContractError(f"{who} returned {out.dtype} tokens on {out.device}, expected {tokens.dtype} on "
                                f"{tokens.device} (the input's)")  # fmt: skip
        return out

    return run


def _all_tokens_back(tokens: torch.Tensor, state: StepState) -> torch.Tensor:
    """Runs after every other hook of the last block: refuses tokens still routed there."""
    if state.token_index is not None:
        who, count = state.records[ROUTING]
        raise ContractError(f"{who} routed the image tokens (kept {state.token_index.shape[1]} of {count}) and no "
                            "hook brought every token back by the end of the last block")  # fmt: skip
    return tokens


def collect_losses(
    components: list[Component], batch: TrainBatch, prediction: torch.Tensor, state: StepState, reserved: frozenset
) -> dict[str, torch.Tensor]:
    """Every component's loss terms as float tensors, by name; one named twice or in ``reserved`` is refused."""
    terms: dict[str, torch.Tensor] = {}
    owners: dict[str, str] = {}
    for comp in components:
        for name, value in comp.losses(batch, prediction, state).items():
            if not isinstance(name, str) or name in reserved:
                raise ContractError(
                    f"{label(comp)}: loss term {reprlib.repr(name)} cannot name a column of the training log: "
                    f"names are strings other than the trainer's own {sorted(reserved)}"
                )
            if name in terms:
                raise ContractError(f"components '{owners[name]}' and '{comp.name}' both return loss term '{name}'")
            terms[name], owners[name] = value.float(), comp.name
    return terms


def replacing_objective(components: list[Component]) -> Objective | None:
    """The objective one component puts in place of the track's, or None; two that do are refused."""
    replacing = [(c.name, o) for c in components if (o := c.objective()) is not None]
    if len(replacing) > 1:
        raise ContractError(f"components {[n for n, _ in replacing]} each replace the objective; at most one may")
    return replacing[0][1] if replacing else None
