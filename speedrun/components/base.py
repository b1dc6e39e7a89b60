"""The component protocol: the only thing the trainer knows about training techniques.

A component is one manifest entry (REPA, TREAD, ...). The trainer builds it from its validated
``Params``, calls ``setup`` once, installs its block hooks, adds its named loss terms to the
objective's loss, and lets at most one component replace the objective. Components never see the
clock, the data loader, the evaluator or the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from speedrun.state import BlockHook, StepState

if TYPE_CHECKING:
    from speedrun.flow import Objective
    from speedrun.model.prx import PRXDenoiser


class Params(BaseModel):
    """Base for component parameters: frozen, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass
class ComponentContext:
    """What ``Component.setup`` may touch.

    Attributes:
        model: the denoiser (read its ``config``; do not replace its modules).
        track: the effective Track of the run.
        device: where the model lives.
        seed: the run seed.
        trainable: modules registered with ``add_trainable`` (joined to the optimizer, saved under
            ``components.<name>.*`` in checkpoints, dropped at evaluation).
        frozen: modules registered with ``add_frozen`` (teachers: no grad, eval mode, never saved).
    """

    model: PRXDenoiser
    track: Any
    device: torch.device
    seed: int
    trainable: dict[str, nn.Module] = field(default_factory=dict)
    frozen: dict[str, nn.Module] = field(default_factory=dict)

    def add_trainable(self, name: str, module: nn.Module) -> nn.Module:
        if name in self.trainable or name in self.frozen:
            raise ValueError(f"component module '{name}' registered twice")
        module.to(self.device)
        self.trainable[name] = module
        return module

    def add_frozen(self, name: str, module: nn.Module) -> nn.Module:
        if name in self.trainable or name in self.frozen:
            raise ValueError(f"component module '{name}' registered twice")
        module.to(self.device).eval().requires_grad_(False)
        self.frozen[name] = module
        return module


@dataclass
class TrainBatch:
    """One training batch as components see it (model space, already on the device).

    ``images_uint8`` (B, H, W, 3) are the real images for teachers on pixel tracks; None on latent
    tracks, where a component that needs pixels must decode ``x0`` itself.
    """

    x0: torch.Tensor
    noise: torch.Tensor
    text: torch.Tensor
    text_mask: torch.Tensor
    images_uint8: torch.Tensor | None = None


class Component:
    """Base class of every training technique.

    Subclasses set ``name`` (the manifest key) and ``Params`` (a ``speedrun.components.Params``
    subclass), and override whichever of ``setup``, ``hooks``, ``losses`` and ``objective`` they need.
    Each method's default does nothing, so a component pays only for what it uses.
    """

    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: Params) -> None:
        self.params = params

    def setup(self, ctx: ComponentContext) -> None:
        """Register trainable heads and frozen teachers on ``ctx``; called once before training."""

    def hooks(self) -> dict[int, tuple[BlockHook | None, BlockHook | None]]:
        """``{block_index (0-based): (before, after)}``; each hook maps (tokens, state) -> tokens."""
        return {}

    def losses(self, batch: TrainBatch, prediction: torch.Tensor, state: StepState) -> dict[str, torch.Tensor]:
        """Named, already weighted scalar loss terms added to the objective's loss."""
        return {}

    def objective(self) -> Objective | None:
        """A replacement training objective, or None to keep the track's."""
        return None
