"""REPA: align one block's image tokens, through a trainable projector, with a frozen vision teacher.

Loss ``repa = -weight * mean over (batch, tokens) of cos(proj(h), y)``: ``h`` the output tokens of block
``layer`` (1-based), ``y`` the teacher's patch tokens of the real image (so a latent track must keep
``data.train_images``) on the same grid; under routing only the tokens still flowing are compared. The
projector, REPA's MLP ``Linear(h, P) - SiLU - Linear(P, P) - SiLU - Linear(P, D)``, is dropped at evaluation."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from speedrun.components.teachers import SHAPES_ENCODER, Teacher, TeacherName, teacher_for
from speedrun.errors import SpeedrunError
from speedrun.model import MODEL_CONFIGS
from speedrun.protocol import Component, ComponentContext, Params, StepState, TrainBatch

# PRX aligns block 8 of 16; a shallower denoiser gets the same relative depth.
DEFAULT_LAYER_OF_16 = 8


class AlignParams(Params):  # REPA's and iREPA's
    teacher: TeacherName = Field("dinov2-vitl14-reg", description="Frozen vision teacher (timm weights).")
    layer: int | None = Field(None, ge=1, description="1-based block whose output is aligned; None: 8 of 16, scaled.")
    stop_step: int | None = Field(None, ge=0, description="No alignment loss from this step on; None: never stop.")
    random_init_teacher: bool = Field(False, description="A small random-init teacher (tests, benchmarks only).")


class REPAParams(AlignParams):
    weight: float = Field(0.5, ge=0, description="lambda of the alignment loss.")
    projector_dim: int = Field(2048, gt=0, description="Hidden width P of the projector MLP (PRX uses 1024).")


def resolve_layer(layer: int | None, depth: int, component: str) -> int:
    """The 1-based block to align: ``layer`` checked against ``depth``, or the scaled default."""
    if layer is None:
        return max(1, math.floor(depth * DEFAULT_LAYER_OF_16 / 16 + 0.5))
    if not 1 <= layer <= depth:
        raise SpeedrunError(f"component '{component}': layer {layer} is outside the denoiser's blocks 1..{depth}")
    return layer


def gather_tokens(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """``x`` (B, N, D) at positions ``index`` (B, K) along the token axis; ``x`` itself when None."""
    return x if index is None else x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def negative_cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-mean(cos(pred, target))`` over every token of every sample, in float32."""
    cos = (F.normalize(pred.float(), dim=-1) * F.normalize(target.float(), dim=-1)).sum(dim=-1)
    return -cos.mean()


class REPA(Component):
    """Representation alignment (Yu et al. 2024) as PRX part 2 uses it."""

    name = "repa"
    Params = REPAParams
    params: AlignParams

    @classmethod
    def check(cls, params: AlignParams, track: Any) -> None:
        resolve_layer(params.layer, MODEL_CONFIGS[track.model.config]().depth, cls.name)
        if params.teacher == SHAPES_ENCODER and track.data.teacher is None:
            raise SpeedrunError(f"component '{cls.name}': teacher '{SHAPES_ENCODER}' is trained by prepare on tracks "
                                f"with data.teacher; track '{track.id}' has none")  # fmt: skip

    def setup(self, ctx: ComponentContext) -> None:
        cfg = ctx.model.config
        self.block = resolve_layer(self.params.layer, cfg.depth, self.name)
        teacher = teacher_for(ctx, self.name, self.params.teacher, self.params.random_init_teacher)
        self.teacher: Teacher = ctx.add_frozen(f"{self.name}-teacher", teacher)
        self.grid, self.weight = teacher.grid, self.params.weight
        self.projector = ctx.add_trainable(self.name, self.build_projector(cfg.hidden_size, teacher.dim))

    def build_projector(self, hidden: int, dim: int) -> nn.Module:
        p = self.params.projector_dim
        return nn.Sequential(nn.Linear(hidden, p), nn.SiLU(), nn.Linear(p, p), nn.SiLU(), nn.Linear(p, dim))

    def project(self, tokens: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """Projected tokens ``(B, K, D)`` for the ``K`` tokens present (all, or those at ``index``)."""
        return self.projector(tokens)

    def targets(self, features: torch.Tensor) -> torch.Tensor:
        """Teacher tokens ``(B, N, D)`` -> alignment targets over the full grid."""
        return features.float()

    def active(self, step: int) -> bool:
        return self.params.stop_step is None or step < self.params.stop_step

    def hooks(self):
        def record(tokens: torch.Tensor, state: StepState) -> torch.Tensor:
            if state.training and self.active(state.step):
                state.records[self.name] = (tokens, state.token_index)
            return tokens

        return {self.block - 1: (None, record)}

    def losses(self, batch: TrainBatch, prediction: torch.Tensor, state: StepState) -> dict[str, torch.Tensor]:
        if not self.active(state.step):
            return {}
        tokens, index = state.records.pop(self.name)  # left by the hook (setup asked for the images)
        target = gather_tokens(self.targets(self.teacher(batch.images_uint8)), index)
        return {self.name: self.weight * negative_cosine(self.project(tokens, index), target)}
