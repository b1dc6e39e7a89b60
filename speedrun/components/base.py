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

from speedrun.errors import SpeedrunError
from speedrun.state import BlockHook, StepState

if TYPE_CHECKING:
    from speedrun.flow import Objective
    from speedrun.model.prx import PRXDenoiser


class Params(BaseModel):
    """Base for component parameters: frozen, strict (as tracks are), and unknown keys are errors."""

    # strict: a TOML string is never coerced ("0.5" for a float, "true" for a bool is a type error).
    # No nan or inf: they pass one-sided bounds and results JSON would record them as null.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


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
        token_grid: (rows, columns) of the denoiser's image tokens, e.g. (16, 16) on prx-256
            (256-pixel images, 32 x 32 latents, patch 2) and (8, 8) on tiny (32 pixels, patch 4).
        images_available: whether the track's train data keeps the real images (see ``use_images``).
        uses_images: set by ``use_images``; the trainer then loads the real images of every batch.
    """

    model: PRXDenoiser
    track: Any
    device: torch.device
    seed: int
    token_grid: tuple[int, int]
    images_available: bool
    trainable: dict[str, nn.Module] = field(default_factory=dict)
    frozen: dict[str, nn.Module] = field(default_factory=dict)
    uses_images: bool = False

    def use_images(self, component: str) -> None:
        """Ask for ``TrainBatch.images_uint8`` (the real train images) in every step.

        Raises a SpeedrunError naming ``component`` when the track's train data keeps no images.
        """
        if not self.images_available:
            data = self.track.data
            raise SpeedrunError(
                f"component '{component}' needs the real images (its teacher reads pixels), but track "
                f"'{self.track.id}' trains on '{data.representation}' latents without keeping the train images "
                "(data.train_images = false); use it on a track that keeps them"
            )
        self.uses_images = True

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

    ``images_uint8`` (B, H, W, 3) are the real train images (image_size square, whatever the
    token grid) when a component asked for them with ``ComponentContext.use_images``; else None.
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
        """``{block_index (0-based): (before, after)}``; each hook maps (tokens, state) -> tokens.

        Checked once when training starts: a dict of block indices below the denoiser's depth to
        pairs whose entries are callables or None. Each call's output is checked too: a tensor of the
        input's dtype and device, (B, N, hidden) like the input, where N is the input's count unless
        the hook sets or clears ``state.token_index``. A routing hook that sets it returns exactly the
        ``index.shape[1]`` tokens it names; the hook that clears it returns every image token, and
        by the end of the last block every routing must be cleared.
        """
        return {}

    def losses(self, batch: TrainBatch, prediction: torch.Tensor, state: StepState) -> dict[str, torch.Tensor]:
        """Named, already weighted scalar loss terms added to the objective's loss.

        Each name becomes a column of the training log, so it may not be one of the trainer's own
        (``speedrun.train.STEP_LOG_KEYS``: ``loss``, ``loss_fm``, ``step``, ``lr``, ...).
        """
        return {}

    def objective(self) -> Objective | None:
        """A replacement training objective, or None to keep the track's."""
        return None
