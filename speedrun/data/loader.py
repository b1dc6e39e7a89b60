"""The training data loader: a seeded, resumable, rank-partitioned stream of batches.

The stream concatenates per-epoch permutations, epoch ``e`` permuted by ``Generator(PCG64([seed, e]))``.
Global batch ``k`` is stream positions ``[k*B, (k+1)*B)`` (across epochs, nothing dropped); rank ``r``
of ``W`` takes ``[r*B/W, (r+1)*B/W)`` of it. ``position`` counts global examples consumed, so a loader
rebuilt from ``state_dict()``, with any number of ranks, continues with the old one's batches.
``prefetch`` reads (and on CUDA pins) the next batch's rows in a thread during the step; float32
conversion runs on the device (~45 ms on one CPU core).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import InitVar, dataclass
from typing import Any

import numpy as np
import torch

from speedrun.data.shards import SplitDataset
from speedrun.errors import SpeedrunError


@dataclass(frozen=True, slots=True)
class Batch:
    """One batch in model space."""

    x: torch.Tensor  # float32 (B, C, H, W): pixels mapped to [-1, 1] (x/127.5 - 1), or latents as stored
    text: torch.Tensor  # float32 (B, L, D) token embeddings, zero at padding
    text_mask: torch.Tensor  # bool (B, L), True for real tokens
    index: torch.Tensor  # int64 (B,) example indices within the split
    images: torch.Tensor | None = None  # uint8 (B, H, W, 3) real images, when asked for (teachers)


def from_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images (B, H, W, 3) -> float32 (B, 3, H, W) in [-1, 1] (x/127.5 - 1)."""
    return torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3): clamp(round((x+1)*127.5), 0, 255), once."""
    return ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def host_rows(
    split: SplitDataset, indices: np.ndarray, images: bool = False, pin: bool = False
) -> dict[str, torch.Tensor]:
    """Rows ``indices`` of ``split`` as stored, as host tensors (pinned if ``pin``), with real images if asked."""
    rows = split.gather(indices)
    if images and split.representation != "pixels":
        rows["images"] = split.images(indices)
    tensors = {name: torch.from_numpy(array) for name, array in rows.items()}
    return {name: t.pin_memory() for name, t in tensors.items()} if pin else tensors


def to_batch(rows: dict[str, torch.Tensor], representation: str, device: str | torch.device, images: bool) -> Batch:
    """``host_rows`` output as a Batch on ``device``; stored dtypes travel (less traffic), then become float32."""
    moved = {name: t.to(device, non_blocking=True) for name, t in rows.items()}
    x = moved["x"]
    if representation == "pixels":
        real, x = x if images else None, from_uint8(x)
    else:
        x, real = x.float(), moved["images"] if images else None
    return Batch(x=x, text=moved["text"].float(), text_mask=moved["mask"], index=moved["index"], images=real)


def load_batch(split: SplitDataset, indices: np.ndarray, device: str | torch.device = "cpu") -> Batch:
    """Rows ``indices`` of ``split`` as a Batch on ``device`` (in that order), without real images."""
    return to_batch(host_rows(split, indices), split.representation, device, False)


def _reader(device: torch.device) -> ThreadPoolExecutor:
    """The prefetch thread; on CUDA it makes ``device`` current, lest pinning open a context on cuda:0 per rank."""
    if device.type != "cuda":
        return ThreadPoolExecutor(1, "speedrun-loader")
    index = torch.cuda.current_device() if device.index is None else device.index
    return ThreadPoolExecutor(1, "speedrun-loader", initializer=torch.cuda.set_device, initargs=(index,))


@dataclass(eq=False)
class Loader:
    """Infinite iterator of this rank's share of every global batch (see module doc); with ``prefetch``
    its thread is the only reader of ``split`` until ``close()``."""

    split: SplitDataset
    batch_size: int
    seed: int
    rank: int = 0
    world_size: int = 1
    position: int = 0
    device: str | torch.device = "cpu"
    images: bool = False
    prefetch: InitVar[bool] = False

    def __post_init__(self, prefetch: bool) -> None:
        batch_size, world_size = self.batch_size, self.world_size
        if batch_size <= 0 or world_size <= 0 or batch_size % world_size:
            raise SpeedrunError(f"global batch {batch_size} must be a positive multiple of the world size {world_size}")
        self._local = batch_size // world_size
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)
        where = torch.device(self.device)
        self._pin = prefetch and where.type == "cuda"
        self._worker = _reader(where) if prefetch else None
        self._ahead: tuple[int, Future] | None = None  # (position, its rows being read): the next batch

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of the split's examples in ``epoch``."""
        if epoch != self._perm_epoch:
            self._perm = np.random.Generator(np.random.PCG64([self.seed, epoch])).permutation(len(self.split))
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
        # Read ahead only now, to overlap the training step, not this batch's conversion (same CPU cores).
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
            "position": self.position, "seed": self.seed, "batch_size": self.batch_size, "split": self.split.name,
            "num_examples": len(self.split),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()``; the seed, global batch and split must match."""
        mine = self.state_dict()
        for key in ("seed", "batch_size", "split", "num_examples"):
            if state.get(key) != mine[key]:
                raise SpeedrunError(f"loader state has {key}={state.get(key)!r} but this loader has {mine[key]!r}; "
                                    "a run resumes only with the data and batch it started with")
        self.position = state["position"]
