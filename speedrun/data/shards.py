"""On-disk format of a prepared dataset (``speedrun.data.prepare`` writes it): ``manifest.json``, written last
(its presence means "complete"); ``null/{text,mask}.npy``, the empty caption's embedding; per split,
``<split>/shard-00000/`` folders holding x.npy (pixels uint8 (n, H, W, 3) or latents float16 (n, C, h, w)),
text.npy (float16 (n, L, D), zero where mask is False), mask.npy (bool (n, L), True = real token), index.npy
(int64 example index within the split), digests.npy (uint8 (n, 32): sha256 of index, caption, image bytes),
captions.json, specs.json (shapes only), images.npy (latent tracks' real uint8 images) and shard.json (start,
count, file hashes); ``teacher/model.safetensors``, the vision encoder trained on the train split, on tracks
with ``data.teacher`` (``speedrun.data.teacher``). A shard is built in a hidden ``.<name>.partial-<pid>``
folder and renamed into place when complete; readers gather rows from memory maps.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import resource
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from speedrun.errors import SpeedrunError, format_validation_error
from speedrun.fileio import fsync_folder, sha256_file, sync_after_rename, write_durably
from speedrun.paths import prepare_command

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_ENTRY_NAME = "shard.json"
NULL_DIR = "null"
TEACHER_DIR = "teacher"
TEACHER_FILE = "model.safetensors"
SPLITS = ("train", "validation", "reference")
ROW_FIELDS = ("x", "text", "mask", "index")
MAX_OPEN_MAPS = 4096  # maps a split keeps open (LRU); a prx-256 batch reads ~250 shards x 4 fields


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileEntry(_Model):
    sha256: str
    bytes: int


class ShardEntry(_Model):
    name: str
    start: int
    count: int
    files: dict[str, FileEntry]


class SplitEntry(_Model):
    num_examples: int
    definition_hash: str
    shards: list[ShardEntry]


class TextEncoderInfo(_Model):
    key: str
    id: str
    revision: str
    dim: int
    max_tokens: int
    precision: str


class VaeInfo(_Model):
    id: str
    revision: str
    scaling_factor: float
    shift_factor: float


class Manifest(_Model):
    """The contents of ``manifest.json``."""

    format_version: int
    dataset_hash: str
    definition: dict[str, Any]
    representation: Literal["pixels", "latents"]
    image_size: int
    x_shape: tuple[int, int, int]
    text_encoder: TextEncoderInfo
    vae: VaeInfo | None
    null_text: dict[str, FileEntry]
    splits: dict[str, SplitEntry]
    # {TEACHER_FILE: entry} on tracks with data.teacher; left out of manifest.json when None (see dump).
    teacher: dict[str, FileEntry] | None = None

    def dump(self) -> dict[str, Any]:
        """The JSON document of ``manifest.json``: without ``teacher`` when there is none, so datasets of
        tracks without one keep the manifest bytes (and sha256, recorded in results) they had before it."""
        return self.model_dump(mode="json", exclude={"teacher"} if self.teacher is None else None)


def save_npy(handle: Any, array: np.ndarray) -> None:
    np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)


def example_digest(index: int, caption: str, image: np.ndarray) -> bytes:
    """sha256 over (index, caption, image bytes) of one example; ``image`` is uint8 (H, W, 3)."""
    digest = hashlib.sha256(f"{index}\0{caption}\0{image.shape}\0".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.digest()


def combine_digests(digests: bytes) -> str:
    """A split's definition hash: sha256 over its per-example digests concatenated in index order."""
    return hashlib.sha256(digests).hexdigest()


def write_shard(
    split_dir: Path, name: str, start: int, arrays: dict[str, np.ndarray], documents: dict[str, Any]
) -> ShardEntry:
    """Write one shard (``<key>.npy`` per array, ``<key>.json`` per document), replacing one of that name."""
    final = split_dir / name
    tmp = split_dir / f".{name}.partial-{os.getpid()}"
    try:
        split_dir.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        files = {}
        for key, array in arrays.items():
            path = tmp / f"{key}.npy"
            write_durably(path, functools.partial(save_npy, array=array))
            files[path.name] = file_entry(path)
        for key, document in documents.items():
            path = tmp / f"{key}.json"
            payload = json.dumps(document, ensure_ascii=False).encode()
            write_durably(path, lambda h, p=payload: h.write(p))
            files[path.name] = file_entry(path)
        entry = ShardEntry(name=name, start=start, count=len(arrays["index"]), files=files)
        payload = entry.model_dump_json(indent=1).encode()
        write_durably(tmp / SHARD_ENTRY_NAME, lambda h: h.write(payload))
        fsync_folder(tmp)  # the names of the files in it, before the folder takes its final name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:  # disk full, permissions, I/O errors: the user's to fix
        shutil.rmtree(tmp, ignore_errors=True)
        raise SpeedrunError(f"{final}: cannot write this shard ({exc.strerror or exc}); its partial copy was removed: "
                            "fix that (e.g. free disk space) and run prepare again (it keeps finished shards)") from exc
    sync_after_rename(final)
    return entry


def read_shard_entry(split_dir: Path, name: str) -> ShardEntry | None:
    """The entry of a completely written shard, or None if there is none under that name."""
    try:
        return ShardEntry.model_validate_json((split_dir / name / SHARD_ENTRY_NAME).read_bytes())
    except (OSError, ValidationError):
        return None


def check_files(directory: Path, files: dict[str, FileEntry], *, rehash: bool, remedy: str = "") -> None:
    """Raise SpeedrunError naming the first file missing or of the wrong size or hash, then ``remedy``."""
    for filename, entry in files.items():
        path = directory / filename
        if not path.is_file():
            problem = "missing from the prepared dataset"
        elif (size := path.stat().st_size) != entry.bytes:
            problem = f"{size} bytes but the manifest records {entry.bytes}; the file is truncated or corrupted"
        elif rehash and (actual := sha256_file(path)) != entry.sha256:
            problem = (f"sha256 {actual[:16]}... does not match the manifest ({entry.sha256[:16]}...); "
                       "the file is corrupted")
        else:
            continue
        raise SpeedrunError(f"{path}: {problem}" + (f"; {remedy}" if remedy else ""))


@functools.cache  # the limit is process state: raise it and size the budget once per process
def open_map_budget() -> int:
    """How many memory maps (a file descriptor each) one split may keep open: an eighth of the soft
    limit, raised to the hard one where allowed (the rest is for other splits, libraries, sockets), >= 8."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
        wanted = MAX_OPEN_MAPS * 8 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):  # refused (e.g. a cap below the hard limit): keep soft
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    return MAX_OPEN_MAPS if soft == resource.RLIM_INFINITY else max(8, min(MAX_OPEN_MAPS, soft // 8))


class SplitDataset:
    """One split of a prepared dataset: rows, by index within the split, copied out of memory-mapped shards."""

    def __init__(self, root: Path, name: str, entry: SplitEntry, manifest: Manifest) -> None:
        self.root, self.name, self.entry = root, name, entry
        self.representation = manifest.representation
        self._starts = np.array([s.start for s in entry.shards], dtype=np.int64)
        self._open: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._max_open = open_map_budget()
        self._documents: dict[tuple[int, str], list[Any]] = {}

    def __len__(self) -> int:
        return self.entry.num_examples

    def _shard_dir(self, k: int) -> Path:
        return self.root / self.name / self.entry.shards[k].name

    def _array(self, k: int, field: str) -> np.ndarray:
        key = (k, field)
        if key not in self._open:
            self._open[key] = np.load(self._shard_dir(k) / f"{field}.npy", mmap_mode="r", allow_pickle=False)
            if len(self._open) > self._max_open:
                self._open.popitem(last=False)  # the least recently used
        self._open.move_to_end(key)
        return self._open[key]

    def _locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shard = np.searchsorted(self._starts, indices, side="right") - 1
        return shard, indices - self._starts[shard]

    def gather_field(self, field: str, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` (in that order) of ``<field>.npy`` as one in-memory array."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        shard, local = self._locate(indices)
        first = self._array(0, field)
        out = np.empty((indices.size, *first.shape[1:]), dtype=first.dtype)
        for k in np.unique(shard):
            where = np.nonzero(shard == k)[0]
            rows = local[where]
            # Read in ascending row order (sequential within the file), then place.
            order = np.argsort(rows, kind="stable")
            out[where[order]] = self._array(int(k), field)[rows[order]]
        return out

    def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """``x``, ``text``, ``mask`` and ``index`` of rows ``indices``, as stored (see module doc)."""
        return {field: self.gather_field(field, indices) for field in ROW_FIELDS}

    def _document(self, field: str, indices: np.ndarray | None) -> list[Any]:
        indices = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        shard, local = self._locate(indices)
        out = []
        for k, row in zip(shard.tolist(), local.tolist()):
            key = (k, field)
            if key not in self._documents:
                self._documents[key] = json.loads((self._shard_dir(k) / f"{field}.json").read_bytes())
            out.append(self._documents[key][row])
        return out

    def captions(self, indices: np.ndarray | None = None) -> list[str]:
        """Caption strings of rows ``indices`` (all rows when None)."""
        return self._document("captions", indices)

    def specs(self, indices: np.ndarray | None = None) -> list[dict[str, Any]]:
        """``ShapeSpec.to_json`` dicts of rows ``indices``; shapes only."""
        return self._document("specs", indices)

    def images(self, indices: np.ndarray) -> np.ndarray:
        """Real images uint8 (n, H, W, 3) of rows ``indices``: ``x`` on pixel tracks, else ``images``."""
        return self.gather_field("x" if self.representation == "pixels" else "images", indices)

    @property
    def has_images(self) -> bool:
        """Whether :meth:`images` can read this split's real images."""
        return self.representation == "pixels" or all("images.npy" in s.files for s in self.entry.shards)


class PreparedDataset:
    """A verified prepared dataset: its manifest and lazily opened splits."""

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root, self.manifest = root, manifest
        self.x_shape = manifest.x_shape  # (C, H, W) of one example in model space
        self._splits: dict[str, SplitDataset] = {}

    def split(self, name: str) -> SplitDataset:
        if name not in self._splits:
            self._splits[name] = SplitDataset(self.root, name, self.manifest.splits[name], self.manifest)
        return self._splits[name]

    def null_text(self) -> tuple[np.ndarray, np.ndarray]:
        """The empty caption's embedding float32 (L, D) and mask bool (L,), for caption dropout."""
        base = self.root / NULL_DIR
        return np.load(base / "text.npy", allow_pickle=False).astype(np.float32), np.load(base / "mask.npy")


def read_manifest(root: Path) -> Manifest:
    """Parse ``root/manifest.json``; SpeedrunError if absent, malformed or of another format."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        # ``root`` is one dataset's folder inside a data root; prepare takes the root.
        command = prepare_command("<id>", Path(root).parent)
        raise SpeedrunError(f"{path}: not found; {root} is not a prepared dataset (run `{command}`)")
    try:
        raw = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpeedrunError(f"{path}: not valid JSON ({exc}); delete it and run prepare again") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise SpeedrunError(f"{path}: format_version {version!r}, this harness reads {FORMAT_VERSION}; delete {root} "
                            "and run prepare again")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise SpeedrunError(format_validation_error(str(path), exc)) from None


def open_dataset(root: Path, rehash: bool = False) -> PreparedDataset:
    """Open a prepared dataset after checking its manifest and every file's size (and sha256 if ``rehash``)."""
    root = Path(root)
    manifest = read_manifest(root)
    remedy = f"delete {root / MANIFEST_NAME} and run prepare again (it re-checks every shard, rebuilds damaged ones)"
    folders = [(root / NULL_DIR, manifest.null_text), (root / TEACHER_DIR, manifest.teacher or {})]
    folders += [(root / split / shard.name, shard.files) for split, e in manifest.splits.items() for shard in e.shards]
    for folder, files in folders:
        check_files(folder, files, rehash=rehash, remedy=remedy)
    return PreparedDataset(root, manifest)


def verify(root: Path) -> PreparedDataset:
    """``open_dataset`` plus a sha256 of every file; SpeedrunError names the corrupted file."""
    return open_dataset(root, rehash=True)
