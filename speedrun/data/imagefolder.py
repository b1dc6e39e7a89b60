"""A folder of one's own captioned images as a prepare source, in the Hugging Face ``imagefolder`` convention:
the images and ``metadata.jsonl``, one JSON object a line whose ``file_name`` names an image (relative to the
folder) and whose ``text`` is its caption. A track names the folder in ``data.source``, relative to the track
file, and the bytes of the folder's files, not its place, name the prepared dataset. Rows are split as mjv6's
are (keyed by ``file_name``) and images centre-cropped and resized alike.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from speedrun.data import mjv6
from speedrun.errors import SpeedrunError
from speedrun.fileio import sha256_file
from speedrun.tracks import TRACKS_DIR, Track

METADATA = "metadata.jsonl"
_EXAMPLE_ROW = '{"file_name": "cat.png", "text": "a cat asleep on a red sofa"}'


def folder(track: Track) -> Path:
    """The folder ``track``'s ``data.source`` names, from its track file's folder (else ``tracks/``)."""
    return (track.file.parent if track.file else TRACKS_DIR) / track.data.source


def definition(track: Track) -> dict[str, str]:
    """The source part of the dataset definition: the rules below and the sha256 of every file in the folder
    (with its relative path), so that an edited caption or image is prepared anew."""
    root = folder(track)
    files = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        files.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return {
        "convention": "huggingface imagefolder", "caption": "text", "split": "sha256(imagefolder/heldout/<file_name>)",
        "resize": "center square crop, PIL bicubic", "files_sha256": files.hexdigest(),
    }  # fmt: skip


def read_metadata(root: Path) -> list[tuple[int, str]]:
    """(line number, ``file_name``) of each row of ``root/metadata.jsonl``, blank lines skipped; a SpeedrunError
    names the line of the first row without string ``file_name`` and ``text``, or naming no file of ``root``."""
    path = root / METADATA
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpeedrunError(
            f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc}); the imagefolder a track names in "
            f"data.source holds its images and {METADATA}, one row a line like {_EXAMPLE_ROW}"
        ) from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not all(isinstance(row.get(key), str) for key in ("file_name", "text")):
            raise SpeedrunError(f"{path} line {number}: not a row like {_EXAMPLE_ROW} (both strings)")
        name = Path(row["file_name"])
        if name.is_absolute() or ".." in name.parts or not (root / name).is_file():
            raise SpeedrunError(f"{path} line {number}: file_name '{name}' is no file in {root}")
        rows.append((number, row["file_name"]))
    return rows


class ImageFolderSource:
    """Examples of one prepared split: ``load(split, start, count)`` -> images, captions, None."""

    def __init__(self, track: Track, counts: dict[str, int]) -> None:
        import datasets

        self.root, self.image_size = folder(track), track.data.image_size
        self.rows = read_metadata(self.root)
        # One example per metadata row, in its order: row i is line self.rows[i].
        dataset = datasets.load_dataset("imagefolder", data_dir=str(self.root), split="train")
        self.dataset = dataset.cast_column(mjv6.IMAGE_COLUMN, datasets.Image(decode=False))
        self.splits = mjv6.split_rows([name for _, name in self.rows], counts, namespace="imagefolder")

    def split_size(self, split: str) -> int:
        return len(self.splits[split])

    def _decode(self, row: int, cell: dict) -> np.ndarray:
        try:
            return mjv6.decode(cell, self.image_size)
        except OSError as exc:  # PIL's UnidentifiedImageError is one
            line, name = self.rows[row]
            raise SpeedrunError(f"{self.root / METADATA} line {line}: {name} is not a readable image ({exc})") from None

    def load(self, split: str, start: int, count: int) -> tuple[np.ndarray, list[str], None]:
        rows = self.splits[split][start : start + count].tolist()
        batch = self.dataset[rows]
        with ThreadPoolExecutor(mjv6.DECODE_WORKERS) as pool:  # PIL releases the GIL while decoding
            images = list(pool.map(self._decode, rows, batch[mjv6.IMAGE_COLUMN]))
        return np.stack(images), [text.strip() for text in batch["text"]], None
