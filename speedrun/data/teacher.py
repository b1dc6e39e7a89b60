"""The shapes encoder: a small vision encoder that ``prepare`` trains on the train split of a shapes dataset
(tracks with ``data.teacher``), saved as ``<dataset>/teacher/model.safetensors``, hashed in the manifest, and
frozen as the REPA/iREPA teacher "shapes-encoder" (``speedrun.components.teachers``) as DINOv2 is prx-256's.

Objective, dense and supervised by the generator's scene specs: for each patch token, the share of the
patch's pixels painted by each (kind, colour, size) of shape or by the background, a soft-label
cross-entropy over :data:`CLASSES`. Telling a kind takes the shape's outline, more than one patch, so the
tokens must carry context. Training is a function of the train split and ``TeacherTraining`` alone: fixed
seed and batch order, fp32 on the CPU, deterministic algorithms.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load, save
from torch import nn

from speedrun.data import shapes, shards
from speedrun.data.shards import TEACHER_DIR, TEACHER_FILE, SplitDataset
from speedrun.errors import SpeedrunError
from speedrun.eval.dino import MEAN, STD
from speedrun.fileio import atomic_write_bytes
from speedrun.tracks import TeacherTraining

# Class 0 is the background; then one per (kind, colour, size), in the generator's orders.
_SHAPE_CLASSES = {key: 1 + i for i, key in enumerate(itertools.product(shapes.KINDS, shapes.COLOURS, shapes.SIZES))}
CLASSES = 1 + len(_SHAPE_CLASSES)


class ShapesEncoder(nn.Module):
    """ImageNet-normalised images ``(B, 3, H, W)`` float32 -> patch tokens ``(B, (H / patch) * (W / patch), dim)``,
    row-major: a patchify convolution, ``depth`` pre-norm residual 3x3 convolutions on the patch grid, a
    LayerNorm. Has the attributes ``speedrun.components.teachers.Teacher`` reads of a timm network."""

    num_prefix_tokens = 0  # no CLS or register tokens

    def __init__(self, spec: TeacherTraining) -> None:
        super().__init__()
        self.num_features = spec.dim
        self.stem = nn.Conv2d(3, spec.dim, kernel_size=spec.patch, stride=spec.patch)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(1, spec.dim), nn.Conv2d(spec.dim, spec.dim, 3, padding=1), nn.GELU())
            for _ in range(spec.depth)
        )
        self.norm = nn.LayerNorm(spec.dim)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.norm(x.flatten(2).transpose(1, 2))


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` -> float32 ``(B, 3, H, W)`` as ``Teacher.preprocess`` gives it at the images' size."""
    x = images.permute(0, 3, 1, 2).float().div(255.0)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def pixel_classes(specs: list[dict[str, Any]], size: int) -> np.ndarray:
    """uint8 ``(n, size, size)``: the class (:data:`CLASSES`) of each pixel of each scene as rendered."""
    out = np.zeros((len(specs), size, size), dtype=np.uint8)
    for row, data in zip(out, specs):
        spec = shapes.ShapeSpec.from_json(data)
        where = shapes.shape_map(spec, size)
        for k, shape in enumerate(spec.shapes):
            row[where == k] = _SHAPE_CLASSES[(shape.kind, shape.colour, shape.size)]
    return out


def _batch_order(n: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
    """``(steps, batch_size)`` example indices: successive seeded permutations of ``range(n)``, cut in batches."""
    gen = torch.Generator().manual_seed(seed)
    epochs = -(-steps * batch_size // n)
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(epochs)])
    return order[: steps * batch_size].view(steps, batch_size).numpy()


def train(spec: TeacherTraining, split: SplitDataset) -> dict[str, torch.Tensor]:
    """The encoder's weights after ``spec.steps`` AdamW steps on ``split`` (its images and scene specs), on one
    CPU thread; the global RNG, thread count and deterministic-algorithms setting are left as found."""
    images = torch.from_numpy(split.images(np.arange(len(split))))
    size = images.shape[1]
    labels = torch.from_numpy(pixel_classes(split.specs(), size)).long()
    order = _batch_order(len(split), spec.steps, spec.batch_size, spec.seed)
    was_deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    # One thread: the reductions' order, hence the bytes, do not depend on the machine's core count (they
    # do with 2 or 4 threads); and at ~0.3 s a step (batch 64, 2 shared cores) it is no slower than two.
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            encoder = ShapesEncoder(spec)
            head = nn.Linear(spec.dim, CLASSES)  # the classifier the objective needs; not part of the teacher
        params = [*encoder.parameters(), *head.parameters()]
        optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0, foreach=False)
        for rows in order:
            rows = torch.from_numpy(rows)
            # (B, classes, grid, grid) -> (B, tokens, classes): each patch's pixel share per class
            onehot = F.one_hot(labels[rows], CLASSES).permute(0, 3, 1, 2).float()
            target = F.avg_pool2d(onehot, spec.patch).flatten(2).transpose(1, 2)
            logits = head(encoder.forward_features(normalise(images[rows])))
            loss = -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)
    return {name: tensor.detach().contiguous() for name, tensor in encoder.state_dict().items()}


def write(out: Path, spec: TeacherTraining, split: SplitDataset) -> Path:
    """Train on ``split`` and write the weights to ``out/teacher/model.safetensors``; return that path."""
    path = out / TEACHER_DIR / TEACHER_FILE
    atomic_write_bytes(path, save(train(spec, split)))
    return path


def check_recorded(root: Path, manifest: shards.Manifest) -> None:
    """SpeedrunError unless the manifest of the prepared dataset ``root``, of a track with ``data.teacher``,
    records the teacher (a dataset prepared by a harness before teachers, or an edited manifest, may not)."""
    if manifest.teacher is None:
        raise SpeedrunError(f"{root / shards.MANIFEST_NAME}: records no {TEACHER_DIR}/{TEACHER_FILE} though the track "
                            "sets data.teacher; delete it and run prepare again to train the teacher (shards are kept)")


def load_encoder(root: Path, spec: TeacherTraining) -> tuple[ShapesEncoder, str]:
    """The encoder of the prepared dataset ``root`` and its file's sha256, after checking that file against the
    manifest; SpeedrunError naming the file or the manifest when either is wrong."""
    manifest = shards.read_manifest(root)
    check_recorded(root, manifest)
    remedy = f"delete {root / shards.MANIFEST_NAME} and run prepare again (it keeps the shards, retrains the teacher)"
    shards.check_files(root / TEACHER_DIR, manifest.teacher, rehash=True, remedy=remedy)
    # data.teacher is part of the dataset's hash and the file is checked above: it holds this architecture.
    encoder = ShapesEncoder(spec)
    encoder.load_state_dict(load((root / TEACHER_DIR / TEACHER_FILE).read_bytes()))
    return encoder, manifest.teacher[TEACHER_FILE].sha256
