"""MidJourney-v6 (``brivangl/midjourney-v6-llava``) as a prepare source: uint8 images + captions.

Caption: ``llava``, else ``prompt``. Rows sorted by a hash of their ``id`` (else row number) give reference,
then validation; train is the first ``train_examples`` other rows, less any sharing an id with a held-out
row. A local copy (``save_to_disk`` folder or parquet files) can stand in for the hub.
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from speedrun.errors import SpeedrunError

DATASET_REPO = "brivangl/midjourney-v6-llava"
ID_COLUMN = "id"
IMAGE_COLUMN = "image"
CAPTION_COLUMN = "llava"
FALLBACK_CAPTION_COLUMN = "prompt"
LOCAL_ENV = "SPEEDRUN_MJV6_DIR"
DECODE_WORKERS = min(8, os.cpu_count() or 1)


def load_source(source: str, local: str | Path | None = None) -> Any:
    """The train split of ``source`` (``repo@revision``) or of a ``local`` copy, as a ``datasets.Dataset``."""
    import datasets

    local = local or os.environ.get(LOCAL_ENV)
    if local:
        path = Path(local)
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            dataset = datasets.load_from_disk(str(path))
        elif parquet := sorted(str(p) for p in path.rglob("*.parquet")):
            dataset = datasets.load_dataset("parquet", data_files=parquet, split="train")
        else:
            raise SpeedrunError(f"{path}: neither a datasets.save_to_disk folder nor a folder of parquet files "
                                f"(set by ${LOCAL_ENV})")
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset["train"]
    else:
        repo, _, revision = source.partition("@")
        try:
            dataset = datasets.load_dataset(repo, revision=revision or None, split="train")
        except (OSError, ValueError) as exc:  # offline / not cached: hub and datasets errors derive from these
            raise SpeedrunError(
                f"cannot load the dataset {source} (data.source): {type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}. Run once online so Hugging Face caches it, or "
                f"point ${LOCAL_ENV} at a local copy (save_to_disk folder or parquet files)."
            ) from None
    columns = set(dataset.column_names)
    if IMAGE_COLUMN not in columns or not {CAPTION_COLUMN, FALLBACK_CAPTION_COLUMN} & columns:
        raise SpeedrunError(
            f"dataset {source} has columns {dataset.column_names}; it needs '{IMAGE_COLUMN}' and "
            f"'{CAPTION_COLUMN}' or '{FALLBACK_CAPTION_COLUMN}'"
        )
    return dataset


def split_rows(ids: list[str], counts: dict[str, int], namespace: str = "mjv6") -> dict[str, np.ndarray]:
    """Row numbers of each split (see module doc), rows ordered by ``sha256(<namespace>/heldout/<id>)``;
    SpeedrunError if there are too few rows."""
    digests = (hashlib.sha256(f"{namespace}/heldout/{i}".encode()).digest() for i in ids)
    keys = np.array([int.from_bytes(d[:8], "little") for d in digests], dtype=np.uint64)
    order = np.argsort(keys, kind="stable")
    n_ref, n_val = counts["reference"], counts["validation"]
    held = {"reference": order[:n_ref], "validation": order[n_ref : n_ref + n_val]}
    held_ids = {ids[i] for rows in held.values() for i in rows.tolist()}
    train = [i for i, row_id in enumerate(ids) if row_id not in held_ids][: counts["train"]]
    if len(order) < n_ref + n_val or len(train) < counts["train"]:
        raise SpeedrunError(
            f"the dataset has {len(ids)} rows; the track asks for {counts['train']} train + "
            f"{n_val} validation + {n_ref} reference examples (data.*_examples)"
        )
    return {**held, "train": np.array(train, dtype=np.int64)}


def center_crop_resize(image: Any, size: int) -> np.ndarray:
    """A PIL image -> uint8 (size, size, 3): central square crop, PIL bicubic resize."""
    from PIL import Image

    image = image.convert("RGB")
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def decode(cell: dict[str, Any], size: int) -> np.ndarray:
    """An undecoded HF ``Image`` cell (bytes or path) -> uint8 (size, size, 3)."""
    from PIL import Image

    with Image.open(io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"]) as image:
        return center_crop_resize(image, size)


class Mjv6Source:
    """Examples of one prepared split: ``load(split, start, count)`` -> images, captions, None."""

    definition: ClassVar[dict[str, str]] = {
        "dataset": DATASET_REPO, "caption": f"{CAPTION_COLUMN} or {FALLBACK_CAPTION_COLUMN}",
        "split": "sha256(mjv6/heldout/<id>)", "resize": "center square crop, PIL bicubic",
    }  # fmt: skip

    def __init__(self, dataset: Any, image_size: int, counts: dict[str, int]) -> None:
        import datasets

        self.dataset = dataset.cast_column(IMAGE_COLUMN, datasets.Image(decode=False))
        self.image_size = image_size
        ids = self.dataset[ID_COLUMN] if ID_COLUMN in self.dataset.column_names else range(len(self.dataset))
        self.rows = split_rows([str(i) for i in ids], counts)

    def split_size(self, split: str) -> int:
        return len(self.rows[split])

    def _caption(self, batch: dict[str, list[Any]], i: int) -> str:
        for column in (CAPTION_COLUMN, FALLBACK_CAPTION_COLUMN):
            text = batch.get(column, [None] * (i + 1))[i]
            if isinstance(text, str) and text.strip():
                return text.strip()
        return ""

    def load(self, split: str, start: int, count: int) -> tuple[np.ndarray, list[str], None]:
        rows = self.rows[split][start : start + count].tolist()
        batch = self.dataset[rows]
        with ThreadPoolExecutor(DECODE_WORKERS) as pool:  # PIL releases the GIL while decoding
            images = list(pool.map(lambda cell: decode(cell, self.image_size), batch[IMAGE_COLUMN]))
        captions = [self._caption(batch, i) for i in range(len(rows))]
        return np.stack(images), captions, None
