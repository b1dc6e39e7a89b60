"""The training data loader: a seeded, resumable, rank-partitioned stream of batches.

The example stream is the concatenation of per-epoch permutations of the split, epoch ``e``
permuted by ``numpy.random.Generator(PCG64([seed, e]))`` and nothing else. Global batch ``k`` is
stream positions ``[k*B, (k+1)*B)`` (batches run across epoch boundaries, nothing is dropped),
and rank ``r`` of ``W`` takes the contiguous slice ``[r*B/W, (r+1)*B/W)`` of every global batch.
``position`` counts global examples consumed, so a loader rebuilt from ``state_dict()`` — with
any number of ranks — continues with exactly the batches the old one would have produced.

With ``prefetch`` a background thread reads the rows of the next batch while the current step runs
(the trainer turns it on, with its device): at PRX sizes one rank's rows are ~38 MB of float16 text
embeddings, ~14 ms of gathering from the page cache on one core, which would otherwise leave the GPU
idle every step. On CUDA the thread also pins them, so the copies to the device do not block the
host, and the float32 conversion runs on the device (on one CPU core it takes ~45 ms at that size).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from speedrun.data.shards import SplitDataset
from speedrun.errors import SpeedrunError


@dataclass(frozen=True, slots=True)
class Batch:
    """One batch in model space.

    Attributes:
        x: float32 (B, C, H, W): pixels mapped to [-1, 1] by x/127.5 - 1, or latents as stored.
        text: float32 (B, L, D) text token embeddings, zero at padding.
        text_mask: bool (B, L), True for real tokens.
        index: int64 (B,) example indices within the split.
        images: uint8 (B, H, W, 3) the real images, when asked for (teachers read them); else None.
    """

    x: torch.Tensor
    text: torch.Tensor
    text_mask: torch.Tensor
    index: torch.Tensor
    images: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.x.shape[0]


def from_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images (B, H, W, 3) -> float32 (B, 3, H, W) in [-1, 1] (x/127.5 - 1)."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise ValueError(f"from_uint8 needs uint8 images, got {images.dtype}")
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3): clamp(round((x+1)*127.5), 0, 255).

    The one place model outputs become images: rounded and clamped once, never rescaled again.
    """
    return ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def host_rows(
    split: SplitDataset, indices: np.ndarray, images: bool = False, pin: bool = False
) -> dict[str, torch.Tensor]:
    """Rows ``indices`` of ``split`` as stored, as host tensors (pinned if ``pin``): ``x``, ``text``,
    ``mask``, ``index`` and, for a latent split with ``images``, ``images``."""
    rows = split.gather(indices)
    if images and split.representation != "pixels":
        rows["images"] = split.images(indices)
    tensors = {name: torch.from_numpy(array) for name, array in rows.items()}
    return {name: t.pin_memory() for name, t in tensors.items()} if pin else tensors


def to_batch(rows: dict[str, torch.Tensor], representation: str, device: str | torch.device, images: bool) -> Batch:
    """``host_rows`` output as a Batch on ``device``.

    Stored dtypes (uint8 pixels, float16 latents and text) travel to the device before the float32
    conversion, which halves or quarters host-to-device traffic.
    """
    x = rows["x"].to(device, non_blocking=True)
    real = None
    if representation == "pixels":
        real = x if images else None
        x = from_uint8(x)
    else:
        x = x.float()
        if images:
            real = rows["images"].to(device, non_blocking=True)
    return Batch(
        x=x,
        text=rows["text"].to(device, non_blocking=True).float(),
        text_mask=rows["mask"].to(device, non_blocking=True),
        index=rows["index"].to(device, non_blocking=True),
        images=real,
    )


def load_batch(
    split: SplitDataset, indices: np.ndarray, device: str | torch.device = "cpu", images: bool = False
) -> Batch:
    """Rows ``indices`` of ``split`` as a Batch on ``device`` (in that order), with the real images
    if ``images`` (a SpeedrunError when the split keeps none)."""
    return to_batch(host_rows(split, indices, images), split.representation, device, images)


def _reader(device: torch.device) -> ThreadPoolExecutor:
    """The prefetch thread. On CUDA it makes ``device`` its current device: pinning from a thread
    whose current device is cuda:0 would open a CUDA context there for every rank."""
    if device.type != "cuda":
        return ThreadPoolExecutor(1, "speedrun-loader")
    index = torch.cuda.current_device() if device.index is None else device.index
    return ThreadPoolExecutor(1, "speedrun-loader", initializer=torch.cuda.set_device, initargs=(index,))


class Loader:
    """Infinite iterator of this rank's share of every global batch (see module doc).

    Args:
        split: the split to stream (usually ``dataset.split("train")``).
        batch_size: the global batch size; must be divisible by ``world_size``.
        seed: the run seed; epoch permutations depend on (seed, epoch) only.
        rank, world_size: this process's slice of each global batch.
        position: global examples already consumed (to resume).
        device: where batches are placed.
        images: also load each example's real uint8 image (``Batch.images``).
        prefetch: read the next batch's rows in a background thread (see module doc); that thread
            is then the only reader of ``split``. ``close()`` stops it.
    """

    def __init__(
        self,
        split: SplitDataset,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        position: int = 0,
        device: str | torch.device = "cpu",
        images: bool = False,
        prefetch: bool = False,
    ) -> None:
        if len(split) == 0:
            raise SpeedrunError(f"split '{split.name}' is empty; nothing to load")
        if batch_size <= 0 or world_size <= 0 or batch_size % world_size:
            raise SpeedrunError(f"global batch {batch_size} must be a positive multiple of the world size {world_size}")
        if not 0 <= rank < world_size:
            raise SpeedrunError(f"rank {rank} is outside [0, {world_size})")
        if seed < 0 or position < 0:
            raise SpeedrunError(f"seed ({seed}) and position ({position}) must be >= 0")
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.position = position
        self.device = device
        if images and not split.has_images:
            raise SpeedrunError(f"split '{split.name}' of {split.root} keeps no real images (latents only)")
        self.images = images
        self._local = batch_size // world_size
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)
        where = torch.device(device)
        self._pin = prefetch and where.type == "cuda"
        self._worker = _reader(where) if prefetch else None
        # (position, rows being read for it): the batch after the last one handed out.
        self._ahead: tuple[int, Future] | None = None

    @property
    def epoch(self) -> int:
        """The epoch the next example comes from."""
        return self.position // len(self.split)

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of the split's examples in ``epoch``."""
        if epoch != self._perm_epoch:
            generator = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            self._perm = generator.permutation(len(self.split))
            self._perm_epoch = epoch
        return self._perm

    def indices(self, position: int, count: int) -> np.ndarray:
        """Example indices at stream positions ``[position, position + count)``."""
        n = len(self.split)
        out = np.empty(count, dtype=np.int64)
        done = 0
        while done < count:
            epoch, offset = divmod(position + done, n)
            take = min(count - done, n - offset)
            out[done : done + take] = self.permutation(epoch)[offset : offset + take]
            done += take
        return out

    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> Batch:
        if self._worker is None:
            rows = host_rows(self.split, self._rank_indices(self.position), self.images)
        else:
            ahead, self._ahead = self._ahead, None
            # A prefetch for another position (the loader was rewound by load_state_dict) is dropped.
            future = ahead[1] if ahead is not None and ahead[0] == self.position else self._read(self.position)
            rows = future.result()
        self.position += self.batch_size
        batch = to_batch(rows, self.split.representation, self.device, self.images)
        # Read ahead only now, so the read overlaps the training step rather than this batch's
        # conversion (on the CPU both would contend for the same cores and memory bandwidth).
        if self._worker is not None:
            self._ahead = (self.position, self._read(self.position))
        return batch

    def _rank_indices(self, position: int) -> np.ndarray:
        return self.indices(position + self.rank * self._local, self._local)

    def _read(self, position: int) -> Future:
        # Indices are drawn here: the permutation cache belongs to the calling thread.
        return self._worker.submit(host_rows, self.split, self._rank_indices(position), self.images, self._pin)

    def close(self) -> None:
        """Stop the prefetch thread (after the read in flight); the loader cannot prefetch again."""
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker, self._ahead = None, None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: position plus what it is only valid with."""
        return {
            "position": self.position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "split": self.split.name,
            "num_examples": len(self.split),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()``; the seed, global batch and split must match."""
        mine = self.state_dict()
        for key in ("seed", "batch_size", "split", "num_examples"):
            if state.get(key) != mine[key]:
                raise SpeedrunError(
                    f"loader state has {key}={state.get(key)!r} but this loader has {mine[key]!r}; "
                    "a run resumes only with the data and batch it started with"
                )
        position = state.get("position")
        if not isinstance(position, int) or position < 0:
            raise SpeedrunError(f"loader state has an invalid position {position!r}")
        self.position = position
