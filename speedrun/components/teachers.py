"""Frozen vision teachers for representation alignment (REPA, iREPA): pinned timm ViTs.

A :class:`Teacher` maps real images ``(B, H, W, 3)`` uint8 to patch tokens ``(B, grid_h * grid_w, D)``
laid out row-major like the denoiser's image tokens: pixels / 255, bicubic resize so that the
teacher's patch grid equals the denoiser's token grid (``grid * teacher_patch`` pixels a side),
ImageNet mean/std, ``forward_features`` (after the final norm), CLS and register tokens dropped.

Weights are looked up, in order, in ``$SPEEDRUN_WEIGHTS_DIR/<timm name>/model.safetensors`` (the
same layout as the evaluator's DINO weights, so one copy serves both) and in the Hugging Face cache
(downloaded there when online). Missing weights are a SpeedrunError naming the hub id and how to
supply them; nothing falls back to another network, except on a track whose evaluation itself uses
random-init networks (``eval.extractors = "random-init"``, the smoke track), where the teacher is a
small random-init network of the same family and a note says so. ``random_init=True`` asks for that
network anywhere (tests, benchmarks).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from speedrun.errors import SpeedrunError

WEIGHTS_DIR_ENV = "SPEEDRUN_WEIGHTS_DIR"
WEIGHTS_FILE = "model.safetensors"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The random-init stand-in: the same timm architecture (patch size, registers, RoPE or not), shrunk.
RANDOM_INIT_ARCH: dict[str, Any] = {"embed_dim": 32, "depth": 2, "num_heads": 2}
RANDOM_INIT_SEED = 0

TeacherName = Literal["dinov2-vitl14-reg", "dinov2-vitb14", "dinov3-vitl16"]


@dataclass(frozen=True, kw_only=True, slots=True)
class TeacherSpec:
    """A pinned teacher: timm model name (its weights live at ``timm/<timm_name>`` on the hub).

    Attributes:
        timm_name: ``timm.create_model`` name including the pretrained tag.
        revision: hub commit of the weights, or None for the default branch (to pin once looked up online).
        patch: teacher patch side in pixels.
        dim: width of its patch tokens.
        note: licence or access remark shown when the weights are missing.
    """

    timm_name: str
    revision: str | None
    patch: int
    dim: int
    note: str = ""

    @property
    def hub_id(self) -> str:
        return f"timm/{self.timm_name}"


TEACHERS: dict[str, TeacherSpec] = {
    # dinov2_vitl14_reg, the PRX REPA teacher; same revision as the evaluator's DINO-MMD network.
    "dinov2-vitl14-reg": TeacherSpec(
        timm_name="vit_large_patch14_reg4_dinov2.lvd142m",
        revision="f3c408e77602bb412aa65fb03dfa0d5f95cb3832",
        patch=14,
        dim=1024,
    ),
    # dinov2_vitb14, REPA's own default teacher.
    "dinov2-vitb14": TeacherSpec(timm_name="vit_base_patch14_dinov2.lvd142m", revision=None, patch=14, dim=768),
    # dinov3_vitl16 (timm's Eva port: RoPE, 4 registers).
    "dinov3-vitl16": TeacherSpec(
        timm_name="vit_large_patch16_dinov3.lvd1689m",
        revision=None,
        patch=16,
        dim=1024,
        note="the DINOv3 weights are under the DINOv3 licence: accept it on the hub page before downloading",
    ),
}


class Teacher(nn.Module):
    """Frozen images -> patch tokens on the denoiser's grid.

    Attributes:
        network: the timm ViT.
        grid: ``(rows, cols)`` of patch tokens, equal to the denoiser's token grid.
        input_size: ``(H, W)`` pixels the network sees (``grid * patch``).
        dim: token width.
        id: what was loaded (``timm/<name>@<revision>`` or ``random-init:<name>-...``).
    """

    def __init__(self, network: nn.Module, grid: tuple[int, int], patch: int, id: str) -> None:
        super().__init__()
        self.network = network
        self.grid = grid
        self.input_size = (grid[0] * patch, grid[1] * patch)
        self.dim = int(network.num_features)
        self.id = id
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)`` uint8 -> ``(B, 3, *input_size)`` float32, ImageNet-normalised.

        Bicubic overshoot is clamped back to [0, 1] before normalising; antialiasing is used only
        when shrinking.
        """
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"teacher expects (B, H, W, 3) uint8 images, got {tuple(images.shape)} {images.dtype}")
        x = images.permute(0, 3, 1, 2).float().div(255.0)
        if tuple(x.shape[-2:]) != self.input_size:
            shrink = x.shape[-2] > self.input_size[0] or x.shape[-1] > self.input_size[1]
            x = F.interpolate(x, size=self.input_size, mode="bicubic", align_corners=False, antialias=shrink)
            x = x.clamp(0.0, 1.0)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)`` uint8 -> ``(B, grid_h * grid_w, dim)`` patch tokens (row-major), no grad."""
        tokens = self.network.forward_features(self.preprocess(images))
        patches = tokens[:, self.network.num_prefix_tokens :]
        expected = self.grid[0] * self.grid[1]
        if patches.shape[1] != expected:
            raise RuntimeError(f"teacher {self.id} returned {patches.shape[1]} patch tokens, expected {expected}")
        return patches


def weights_file(spec: TeacherSpec) -> Path:
    """The teacher's ``model.safetensors``: ``$SPEEDRUN_WEIGHTS_DIR/<timm name>/`` first, then the HF cache.

    Raises:
        SpeedrunError: found in neither place (and not downloadable), naming the hub id, the
            revision and where to put the file.
    """
    base = os.environ.get(WEIGHTS_DIR_ENV)
    if base:
        local = Path(base) / spec.timm_name / WEIGHTS_FILE
        if local.is_file():
            return local
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return Path(hf_hub_download(spec.hub_id, WEIGHTS_FILE, revision=spec.revision))
    except (OSError, ValueError, HfHubHTTPError) as exc:
        revision = spec.revision or "main"
        note = f" Note: {spec.note}." if spec.note else ""
        raise SpeedrunError(
            f"teacher weights unavailable: timm model '{spec.timm_name}' needs {spec.hub_id}@{revision} "
            f"({WEIGHTS_FILE}), found neither in ${WEIGHTS_DIR_ENV}/{spec.timm_name}/ "
            f"(${WEIGHTS_DIR_ENV}={base or 'unset'}) nor in the Hugging Face cache ({type(exc).__name__}). "
            f"Run once online (HF_HUB_OFFLINE unset) to cache it, or copy {WEIGHTS_FILE} of "
            f"https://huggingface.co/{spec.hub_id} into ${WEIGHTS_DIR_ENV}/{spec.timm_name}/.{note}"
        ) from None


def build_network(
    spec: TeacherSpec, input_size: tuple[int, int], weights: Path | None, arch: dict[str, Any] | None = None
) -> nn.Module:
    """The timm network for ``input_size`` pixels, from ``weights`` (position embeddings resampled by
    timm when the size differs from pretraining) or random-init when ``weights`` is None."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": 0, "img_size": input_size, **(arch or {})}
    if weights is None:
        return timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    return timm.create_model(spec.timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(weights)}, **kwargs)


def load_teacher(name: str, grid: tuple[int, int], *, random_init: bool = False) -> Teacher:
    """The teacher ``name`` (a key of :data:`TEACHERS`) for a denoiser token ``grid``.

    ``random_init`` builds the same architecture shrunk to :data:`RANDOM_INIT_ARCH`, initialised
    from :data:`RANDOM_INIT_SEED` without touching the global RNG.
    """
    if name not in TEACHERS:
        raise SpeedrunError(f"unknown teacher '{name}'; known: {sorted(TEACHERS)}")
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


def teacher_for(ctx: Any, component: str, name: str, random_init: bool) -> Teacher:
    """Load the teacher a component asked for under the track's weights policy (see the module doc).

    Real weights unless ``random_init`` or the track evaluates with random-init networks; either
    fallback prints a note on stderr, since such a teacher teaches nothing.
    """
    ctx.use_images(component)
    grid = ctx.token_grid
    policy_random = getattr(ctx.track.eval, "extractors", "pretrained") == "random-init"
    use_random = random_init or policy_random
    teacher = load_teacher(name, grid, random_init=use_random)
    if use_random:
        why = "random_init_teacher = true" if random_init else f"track '{ctx.track.id}' uses random-init networks"
        print(f"note: {component}: teacher '{name}' is {teacher.id} ({why}); plumbing only", file=sys.stderr)
    return teacher
