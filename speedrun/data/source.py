"""The prepared data of a track as the trainer and the evaluator consume it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speedrun.data.loader import Batch, Loader, load_batch
from speedrun.data.prepare import dataset_dir
from speedrun.data.shards import MANIFEST_NAME, PreparedDataset, open_dataset
from speedrun.errors import SpeedrunError
from speedrun.fileio import sha256_file
from speedrun.paths import prepare_command
from speedrun.tracks import Track


def dataset_manifest_sha256(track: Track, data_root: Path) -> str | None:
    """sha256 of the prepared manifest (which lists every shard's hash), or None if not prepared."""
    path = dataset_dir(track, data_root) / MANIFEST_NAME
    return sha256_file(path) if path.is_file() else None


@dataclass
class TrainData:
    """A prepared dataset with the views the trainer needs."""

    dataset: PreparedDataset

    @classmethod
    def open(cls, track: Track, data_root: Path) -> TrainData:
        root = dataset_dir(track, data_root)
        if not (root / MANIFEST_NAME).is_file():
            raise SpeedrunError(
                f"{root}: data for track '{track.id}' is not prepared; run `{prepare_command(track.ref, data_root)}`"
            )
        return cls(open_dataset(root))

    @property
    def root(self) -> Path | None:
        """The prepared dataset's folder (where a teacher ``prepare`` trained lives)."""
        return self.dataset.root

    @property
    def text_dim(self) -> int:
        return int(self.dataset.null_text()[0].shape[-1])

    def null_embedding(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty caption, (L, D) float32 and (L,) bool, for caption dropout and CFG."""
        emb, mask = self.dataset.null_text()
        return torch.from_numpy(emb), torch.from_numpy(np.asarray(mask, dtype=bool))

    @property
    def x_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one training example as the denoiser sees it (pixels or latents)."""
        return tuple(self.dataset.x_shape)

    @property
    def train_images(self) -> bool:
        """Whether the train split keeps real images (pixel tracks, or latent ones with data.train_images)."""
        return self.dataset.split("train").has_images

    def loader(
        self, *, batch_size: int, seed: int, rank: int, world_size: int, device: torch.device, images: bool = False
    ) -> Loader:
        """This rank's train batches on ``device``, read one batch ahead (``close()`` it when done)."""
        return Loader(
            self.dataset.split("train"), batch_size, seed, rank=rank, world_size=world_size, device=device,
            images=images, prefetch=True,
        )  # fmt: skip

    def validation(self, n: int) -> Batch:
        """The first ``n`` validation examples, in index order (fixed, held out)."""
        split = self.dataset.split("validation")
        if n > len(split):
            raise SpeedrunError(f"validation loss needs {n} examples; the prepared split has {len(split)}")
        return load_batch(split, np.arange(n))
