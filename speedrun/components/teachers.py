"""Frozen vision teachers for representation alignment (REPA, iREPA): pinned timm ViTs, and the shapes
encoder that ``prepare`` trains for tracks with ``data.teacher`` (``speedrun.data.teacher``).

ViT weights come from ``$SPEEDRUN_WEIGHTS_DIR/<timm name>/model.safetensors`` (shared with the evaluator's
DINO), else the Hugging Face cache; missing ones are an error naming the remedy. Only a track evaluating
with random-init networks (smoke) gets a small random-init stand-in of the same family, with a note. The
shapes encoder is read from the prepared dataset (``ComponentContext.data_dir``), checked against its manifest."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from speedrun.data import teacher as shapes_teacher
from speedrun.errors import SpeedrunError
from speedrun.eval.dino import MEAN as IMAGENET_MEAN
from speedrun.eval.dino import STD as IMAGENET_STD
from speedrun.eval.weights import hub_directory
from speedrun.protocol import ContractError

WEIGHTS_FILE = "model.safetensors"
# The random-init stand-in: the same timm architecture (patch size, registers, RoPE or not), shrunk.
RANDOM_INIT_ARCH: dict[str, Any] = {"embed_dim": 32, "depth": 2, "num_heads": 2}
RANDOM_INIT_SEED = 0

SHAPES_ENCODER = "shapes-encoder"
TeacherName = Literal["dinov2-vitl14-reg", "dinov2-vitb14", "dinov3-vitl16", "shapes-encoder"]


@dataclass(frozen=True, kw_only=True, slots=True)
class TeacherSpec:
    """A pinned teacher; its weights live at ``timm/<timm_name>`` on the hub."""

    timm_name: str  # timm.create_model name, with the pretrained tag
    revision: str | None  # hub commit of the weights; None: the default branch (to pin once looked up online)
    patch: int  # pixels
    dim: int
    note: str = ""  # licence or access remark shown when the weights are missing

    @property
    def hub_id(self) -> str:
        return f"timm/{self.timm_name}"


TEACHERS: dict[str, TeacherSpec] = {
    # dinov2_vitl14_reg, the PRX REPA teacher; same revision as the evaluator's DINO-MMD network.
    "dinov2-vitl14-reg": TeacherSpec(
        timm_name="vit_large_patch14_reg4_dinov2.lvd142m", revision="f3c408e77602bb412aa65fb03dfa0d5f95cb3832",
        patch=14, dim=1024,
    ),
    # dinov2_vitb14, REPA's own default teacher.
    "dinov2-vitb14": TeacherSpec(timm_name="vit_base_patch14_dinov2.lvd142m", revision=None, patch=14, dim=768),
    # dinov3_vitl16 (timm's Eva port: RoPE, 4 registers).
    "dinov3-vitl16": TeacherSpec(
        timm_name="vit_large_patch16_dinov3.lvd1689m", revision=None, patch=16, dim=1024,
        note="the DINOv3 weights are under the DINOv3 licence: accept it on the hub page before downloading",
    ),
}


class Teacher(nn.Module):
    """Frozen: real images ``(B, H, W, 3)`` uint8 -> patch tokens ``(B, rows * cols, dim)``, row-major on
    the denoiser's token ``grid`` (the network sees ``grid * patch`` pixels a side)."""

    def __init__(self, network: nn.Module, grid: tuple[int, int], patch: int, id: str) -> None:
        super().__init__()
        self.network, self.grid, self.id, self.dim = network, grid, id, int(network.num_features)
        self.input_size = (grid[0] * patch, grid[1] * patch)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)`` uint8 -> ``(B, 3, *input_size)`` float32: /255, bicubic (antialiased when
        shrinking, overshoot clamped to [0, 1]), ImageNet-normalised."""
        x = images.permute(0, 3, 1, 2).float().div(255.0)
        if tuple(x.shape[-2:]) != self.input_size:
            shrink = x.shape[-2] > self.input_size[0] or x.shape[-1] > self.input_size[1]
            x = F.interpolate(x, size=self.input_size, mode="bicubic", align_corners=False, antialias=shrink)
            x = x.clamp(0.0, 1.0)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens after the final norm; CLS and register tokens dropped."""
        tokens = self.network.forward_features(self.preprocess(images))
        return tokens[:, self.network.num_prefix_tokens :]


def weights_file(spec: TeacherSpec) -> Path:
    """The teacher's ``model.safetensors``: ``$SPEEDRUN_WEIGHTS_DIR/<timm name>/`` first, then the HF cache."""
    who = f"teacher weights unavailable: timm model '{spec.timm_name}'"
    note = f" Note: {spec.note}." if spec.note else ""
    return hub_directory(who, spec.hub_id, spec.revision, (WEIGHTS_FILE,), spec.timm_name, note) / WEIGHTS_FILE


def build_network(
    spec: TeacherSpec, input_size: tuple[int, int], weights: Path | None, arch: dict[str, Any] | None = None
) -> nn.Module:
    """The timm network for ``input_size`` pixels from ``weights`` (position embeddings resampled), or random-init."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": 0, "img_size": input_size, **(arch or {})}
    if weights is not None:
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
    return timm.create_model(spec.timm_name, **kwargs)


def load_teacher(name: str, grid: tuple[int, int], *, random_init: bool = False) -> Teacher:
    """The teacher ``name`` for a denoiser token ``grid``; ``random_init``: the architecture shrunk to
    :data:`RANDOM_INIT_ARCH`, seeded by :data:`RANDOM_INIT_SEED` without touching the global RNG."""
    spec = TEACHERS[name]
    input_size = (grid[0] * spec.patch, grid[1] * spec.patch)
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            network = build_network(spec, input_size, None, RANDOM_INIT_ARCH)
        shape = "-".join(f"{k}{v}" for k, v in RANDOM_INIT_ARCH.items())
        return Teacher(network, grid, spec.patch, f"random-init:{spec.timm_name}-{shape}-seed{RANDOM_INIT_SEED}")
    network = build_network(spec, input_size, weights_file(spec))
    return Teacher(network, grid, spec.patch, f"{spec.hub_id}@{(spec.revision or 'main')[:12]}")


def load_shapes_encoder(track: Any, data_dir: Path | None, grid: tuple[int, int], component: str) -> Teacher:
    """The shapes encoder of ``track``'s prepared dataset in ``data_dir``, its id naming its file's sha256."""
    spec = track.data.teacher
    if spec is None:
        raise ContractError(f"component '{component}': teacher '{SHAPES_ENCODER}' is trained by prepare on tracks "
                            f"with data.teacher; track '{track.id}' has none")  # fmt: skip
    if data_dir is None:
        raise SpeedrunError(f"component '{component}': teacher '{SHAPES_ENCODER}' lives in the prepared dataset, "
                            "but the trainer gave no dataset folder (ComponentContext.data_dir)")  # fmt: skip
    network, sha256 = shapes_teacher.load_encoder(data_dir, spec)
    return Teacher(network, grid, spec.patch, f"{SHAPES_ENCODER}@{sha256[:12]}")


def teacher_for(ctx: Any, component: str, name: str, random_init: bool) -> Teacher:
    """The teacher a component asked for under the track's weights policy; a random-init one notes on stderr.
    The shapes encoder is always the trained one: it needs no download."""
    ctx.use_images(component)
    if name == SHAPES_ENCODER:
        if random_init:
            raise ContractError(f"component '{component}': random_init_teacher is for the hub teachers; "
                                f"'{SHAPES_ENCODER}' is trained by prepare and always available")  # fmt: skip
        return load_shapes_encoder(ctx.track, ctx.data_dir, ctx.token_grid, component)
    use_random = random_init or ctx.track.eval.extractors == "random-init"
    teacher = load_teacher(name, ctx.token_grid, random_init=use_random)
    if use_random:
        why = "random_init_teacher = true" if random_init else f"track '{ctx.track.id}' uses random-init networks"
        print(f"note: {component}: teacher '{name}' is {teacher.id} ({why}); plumbing only", file=sys.stderr)
    return teacher
