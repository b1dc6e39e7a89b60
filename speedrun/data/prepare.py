"""prepare: turn a track's ``data`` section into a verified prepared dataset on disk.

``prepare(track, root)`` renders (shapes) or loads (mjv6) every split, encodes captions with the
track's text encoder (each distinct caption once per shard) and images with the VAE for latent
tracks, and writes shards plus ``manifest.json`` (format: ``speedrun.data.shards``) under
``<root>/<dataset>-<image_size>-<hash8>/``. ``hash8`` starts the sha256 of the dataset definition:
the track's data section (without ``split_hashes``), the text encoder and VAE id + revision, the
source's rules and the shard size; any change to these lands in a new directory.

Idempotent: when the manifest exists, every file is re-hashed and nothing else happens.
Resumable: completed shards (renamed into place atomically, re-hashed before reuse) are kept;
partial ones are redone. Distributed: shard ``k`` belongs to rank ``k % world_size``; with a
``torch.distributed`` process group the ranks meet at a barrier and rank 0 writes the manifest;
without one, whichever call finds every shard complete writes it.

The reference split always keeps uint8 images (for pixel tracks they are ``x``), captions and,
for shapes, the structured scene specs, so the evaluator has real images for FID and specs for
prompt adherence. A latent track with ``data.train_images`` keeps the train split's uint8 images
too, for components whose teacher reads pixels (REPA, iREPA). If the track pins
``data.split_hashes``, each split's definition hash (see ``speedrun.data.shapes.split_definition_hash``)
must match or prepare fails before writing the manifest.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from speedrun.data import shapes
from speedrun.data.shards import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    NULL_DIR,
    SPLITS,
    Manifest,
    ShardEntry,
    SplitEntry,
    TextEncoderInfo,
    VaeInfo,
    atomic_save_npy,
    check_files,
    combine_digests,
    example_digest,
    file_entry,
    read_manifest,
    read_shard_entry,
    verify,
    write_shard,
)
from speedrun.data.text import TextEncoder, get_text_encoder, text_encoder_class
from speedrun.data.vae import FLUX_DOWNSAMPLE, FLUX_LATENT_CHANNELS, FluxVAE, load_flux_vae, parse_ref
from speedrun.errors import SpeedrunError
from speedrun.fileio import atomic_write_json
from speedrun.locks import shard_lock
from speedrun.paths import data_root, lookup, unusable_part
from speedrun.tracks import Track, canonical_hash

# Shards hold about this many bytes; big enough to keep file counts low, small enough that a
# shard is built in memory and an interrupted prepare loses little.
SHARD_BYTES = 256 << 20
# Distinct captions per text-encoder call from prepare (bounds float32 temporaries).
_TEXT_CHUNK = 512


@dataclass(frozen=True, slots=True)
class _Job:
    split: str
    shard: int
    start: int
    count: int

    @property
    def name(self) -> str:
        return f"shard-{self.shard:05d}"


class _ShapesSource:
    definition: ClassVar[dict[str, str]] = {"generator": shapes.SOURCE_ID}

    def __init__(self, track: Track) -> None:
        data = track.data
        if data.source != shapes.SOURCE_ID:
            raise SpeedrunError(
                f"track '{track.id}': data.source '{data.source}' is not a known generator; use '{shapes.SOURCE_ID}'"
            )
        if data.image_size < shapes.MIN_IMAGE_SIZE:
            raise SpeedrunError(
                f"track '{track.id}': data.image_size {data.image_size} is below {shapes.MIN_IMAGE_SIZE}, "
                f"too small for {shapes.SOURCE_ID}"
            )
        self.image_size = data.image_size
        self.counts = _split_counts(track)

    def split_size(self, split: str) -> int:
        return self.counts[split]

    def load(self, split: str, start: int, count: int) -> tuple[np.ndarray, list[str], list[dict[str, Any]]]:
        images, captions, specs = shapes.examples(split, start, count, self.image_size)
        return images, captions, [s.to_json() for s in specs]


def _split_counts(track: Track) -> dict[str, int]:
    data = track.data
    return {"train": data.train_examples, "validation": data.validation_examples, "reference": data.reference_examples}


class _Models:
    """The text encoder and VAE, loaded on first use (a verified dataset needs neither)."""

    def __init__(self, track: Track, text_encoder: TextEncoder | None, vae: FluxVAE | None, device: str) -> None:
        self.track = track
        self.device = device
        self._text = text_encoder
        self._vae = vae

    @property
    def text(self) -> TextEncoder:
        if self._text is None:
            data = self.track.data
            encoder = get_text_encoder(data.text_encoder, data.text_max_tokens, self.device)
            expected = text_encoder_class(data.text_encoder).dim
            if encoder.dim != expected:
                raise SpeedrunError(
                    f"the weights loaded for text encoder '{data.text_encoder}' ({encoder.id}) have width "
                    f"{encoder.dim}, not {expected}: they are not that model"
                )
            self._text = encoder
        return self._text

    @property
    def vae(self) -> FluxVAE:
        if self._vae is None:
            self._vae = load_flux_vae(self.track.data.vae, self.device)
        return self._vae


def _text_info(track: Track, text_encoder: TextEncoder | None) -> TextEncoderInfo:
    data = track.data
    if text_encoder is not None and text_encoder.max_tokens != data.text_max_tokens:
        raise SpeedrunError(
            f"track '{track.id}': data.text_max_tokens is {data.text_max_tokens} but the given text "
            f"encoder pads to {text_encoder.max_tokens}"
        )
    # A loaded encoder and its registered class carry the same identity attributes.
    source = text_encoder or text_encoder_class(data.text_encoder)
    return TextEncoderInfo(
        key=data.text_encoder,
        id=source.id,
        revision=source.revision,
        dim=source.dim,
        max_tokens=data.text_max_tokens,
        precision=source.precision,
    )


def _vae_identity(track: Track, vae: FluxVAE | None) -> dict[str, str] | None:
    if track.data.representation == "pixels":
        return None
    if vae is not None:
        return {"id": vae.id, "revision": vae.revision}
    repo, revision, subfolder = parse_ref(track.data.vae)
    return {"id": repo + (f"#{subfolder}" if subfolder else ""), "revision": revision}


def _examples_per_shard(track: Track, text: TextEncoderInfo, vae: FluxVAE | None) -> int:
    size = track.data.image_size
    image_bytes = size * size * 3
    if track.data.representation == "pixels":
        x_bytes = image_bytes
    else:
        channels, h, w = (
            vae.latent_shape(size)
            if vae
            else (FLUX_LATENT_CHANNELS, size // FLUX_DOWNSAMPLE, size // FLUX_DOWNSAMPLE)
        )
        x_bytes = 2 * channels * h * w + image_bytes  # the reference split also keeps images
    # float16 embeddings + bool mask + int64 index + 32-byte digest
    per_example = x_bytes + text.max_tokens * (2 * text.dim + 1) + 8 + 32
    return max(1, SHARD_BYTES // per_example)


def _data_definition(track: Track) -> dict[str, Any]:
    """``track.data`` less what does not define the dataset.

    ``split_hashes`` check a dataset, they do not define it. ``train_images`` came after datasets had
    been prepared: left out at its default (False) so those datasets keep their directory.
    """
    exclude = {"split_hashes"}
    if not track.data.train_images:
        exclude.add("train_images")
    return track.data.model_dump(mode="json", exclude=exclude)


def dataset_definition(
    track: Track,
    *,
    text_encoder: TextEncoder | None = None,
    vae: FluxVAE | None = None,
    examples_per_shard: int | None = None,
) -> dict[str, Any]:
    """What a prepared dataset is a function of; its canonical hash names the dataset directory."""
    text = _text_info(track, text_encoder)
    source = _ShapesSource.definition if track.data.dataset == "shapes" else _mjv6().Mjv6Source.definition
    return {
        "format_version": FORMAT_VERSION,
        "data": _data_definition(track),
        "source": source,
        "text_encoder": text.model_dump(),
        "vae": _vae_identity(track, vae),
        "examples_per_shard": examples_per_shard or _examples_per_shard(track, text, vae),
    }


def _dir_for(track: Track, root: Path | None, definition: dict[str, Any]) -> Path:
    name = f"{track.data.dataset}-{track.data.image_size}-{canonical_hash(definition)[:8]}"
    return data_root(root) / name


def dataset_dir(track: Track, root: Path | None = None, **kwargs: Any) -> Path:
    """Where ``prepare(track, root, **kwargs)`` puts (or has put) the dataset.

    ``kwargs`` are ``dataset_definition``'s (text_encoder, vae, examples_per_shard).
    """
    return _dir_for(track, root, dataset_definition(track, **kwargs))


def _mjv6():
    from speedrun.data import mjv6

    return mjv6


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int, bool]:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed:
        rank = torch.distributed.get_rank() if rank is None else rank
        world_size = torch.distributed.get_world_size() if world_size is None else world_size
    rank, world_size = rank or 0, world_size or 1
    if not 0 <= rank < world_size:
        raise SpeedrunError(f"rank {rank} is outside [0, {world_size})")
    return rank, world_size, distributed


def _default_device(distributed: bool) -> str:
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{torch.cuda.current_device()}" if distributed else "cuda"


def _jobs(source: Any, per_shard: int) -> list[_Job]:
    jobs = []
    for split in SPLITS:
        n = source.split_size(split)
        for shard, start in enumerate(range(0, n, per_shard)):
            jobs.append(_Job(split, shard, start, min(per_shard, n - start)))
    return jobs


def _reusable(split_dir: Path, job: _Job) -> bool:
    """Whether a complete, uncorrupted shard for ``job`` is already on disk."""
    entry = read_shard_entry(split_dir, job.name)
    if entry is None or (entry.start, entry.count) != (job.start, job.count):
        return False
    try:
        check_files(split_dir / job.name, entry.files, rehash=True, remedy=None)
    except SpeedrunError:
        return False
    return True


def _encode_captions(
    encoder: TextEncoder, captions: list[str], advance: Callable[[float], None]
) -> tuple[np.ndarray, np.ndarray]:
    """float16 (n, L, D) embeddings and bool (n, L) masks, each distinct caption encoded once."""
    unique = list(dict.fromkeys(captions))
    emb = np.empty((len(unique), encoder.max_tokens, encoder.dim), dtype=np.float16)
    mask = np.empty((len(unique), encoder.max_tokens), dtype=bool)
    for start in range(0, len(unique), _TEXT_CHUNK):
        chunk = unique[start : start + _TEXT_CHUNK]
        e, m = encoder.encode(chunk)
        emb[start : start + len(chunk)] = e.numpy()
        mask[start : start + len(chunk)] = m.numpy()
        advance(len(chunk) * len(captions) / len(unique))
    if not np.isfinite(emb).all():
        raise SpeedrunError(f"text encoder {encoder.id} produced values outside the float16 range")
    position = {caption: i for i, caption in enumerate(unique)}
    rows = np.array([position[c] for c in captions], dtype=np.int64)
    return emb[rows], mask[rows]


def _build_shard(
    job: _Job, source: Any, models: _Models, track: Track, advance: Callable[[float], None]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    images, captions, specs = source.load(job.split, job.start, job.count)
    digests = np.stack(
        [
            np.frombuffer(example_digest(job.start + i, c, img), dtype=np.uint8)
            for i, (c, img) in enumerate(zip(captions, images))
        ]
    )
    text, mask = _encode_captions(models.text, captions, advance)
    arrays = {
        "text": text,
        "mask": mask,
        "index": np.arange(job.start, job.start + job.count, dtype=np.int64),
        "digests": digests,
    }
    if track.data.representation == "pixels":
        arrays["x"] = images
    else:
        arrays["x"] = models.vae.encode(images).numpy().astype(np.float16)
        if job.split == "reference" or (job.split == "train" and track.data.train_images):
            arrays["images"] = images
    documents: dict[str, Any] = {"captions": captions}
    if specs is not None:
        documents["specs"] = specs
    return arrays, documents


def _write_null_text(out: Path, encoder: TextEncoder) -> None:
    base = out / NULL_DIR
    if (base / "text.npy").is_file() and (base / "mask.npy").is_file():
        return
    base.mkdir(parents=True, exist_ok=True)
    emb, mask = encoder.encode([""])
    atomic_save_npy(base / "text.npy", emb[0].numpy().astype(np.float16))
    atomic_save_npy(base / "mask.npy", mask[0].numpy())


def _check_pins(track: Track, split_hashes: dict[str, str]) -> None:
    pins = track.data.split_hashes
    unknown = sorted(set(pins) - set(SPLITS))
    if unknown:
        raise SpeedrunError(
            f"track '{track.id}': data.split_hashes names unknown split(s) {unknown}; splits are {list(SPLITS)}"
        )
    for split, pinned in pins.items():
        if split_hashes[split] != pinned:
            raise SpeedrunError(
                f"track '{track.id}': data.split_hashes.{split} pins {pinned} but the prepared "
                f"{split} split hashes to {split_hashes[split]}; the generator or source no longer "
                "produces the track's data"
            )


def _finalize(
    out: Path, track: Track, jobs: list[_Job], models: _Models, definition: dict[str, Any], text: TextEncoderInfo
) -> bool:
    """Write the manifest if every shard is on disk; False if some are still missing."""
    entries: dict[str, list[ShardEntry]] = {split: [] for split in SPLITS}
    for job in jobs:
        entry = read_shard_entry(out / job.split, job.name)
        if entry is None:
            return False
        entries[job.split].append(entry)
    _write_null_text(out, models.text)
    split_hashes = {
        split: combine_digests(b"".join(np.load(out / split / e.name / "digests.npy").tobytes() for e in shard_entries))
        for split, shard_entries in entries.items()
    }
    _check_pins(track, split_hashes)
    first = np.load(out / "train" / entries["train"][0].name / "x.npy", mmap_mode="r")
    representation = "pixels" if track.data.representation == "pixels" else "latents"
    x_shape = (first.shape[3], first.shape[1], first.shape[2]) if representation == "pixels" else tuple(first.shape[1:])
    vae = None
    if representation == "latents":
        model = models.vae
        vae = VaeInfo(
            id=model.id, revision=model.revision, scaling_factor=model.scaling_factor, shift_factor=model.shift_factor
        )
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        dataset_hash=canonical_hash(definition),
        definition=definition,
        representation=representation,
        image_size=track.data.image_size,
        x_shape=x_shape,
        text_encoder=text,
        vae=vae,
        null_text={name: file_entry(out / NULL_DIR / name) for name in ("text.npy", "mask.npy")},
        splits={
            split: SplitEntry(
                num_examples=sum(e.count for e in shard_entries),
                definition_hash=split_hashes[split],
                shards=shard_entries,
            )
            for split, shard_entries in entries.items()
        },
    )
    atomic_write_json(out / MANIFEST_NAME, manifest.model_dump(mode="json"))
    return True


def _prepare_shard(
    out: Path, job: _Job, data_source: Any, models: _Models, track: Track, advance: Callable[[float], None]
) -> None:
    """Make shard ``job`` complete in ``out``, reusing a valid copy; the caller holds its lock, so a
    partial copy is the debris of a killed writer."""
    split_dir = out / job.split
    for stale in split_dir.glob(f".{job.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if _reusable(split_dir, job):
        advance(job.count)
        return
    arrays, documents = _build_shard(job, data_source, models, track, advance)
    write_shard(split_dir, job.name, job.start, arrays, documents)


def _say_waiting(lock: Path) -> None:
    print(f"waiting for another prepare of this data folder to finish a shard ({lock} is locked)", file=sys.stderr)


def _advancer(bar: Any, task: Any) -> Callable[[float], None]:
    """``advance(n)``: move ``task`` of ``bar`` on by n examples (nothing without a bar)."""
    if bar is None:
        return lambda n: None
    return lambda n: bar.advance(task, n)


def _progress_bar(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
    )


def prepare(
    track: Track,
    root: Path | None = None,
    *,
    progress: bool = True,
    text_encoder: TextEncoder | None = None,
    vae: FluxVAE | None = None,
    source: str | Path | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    examples_per_shard: int | None = None,
    device: str | None = None,
) -> Path:
    """Prepare ``track``'s data under ``root`` (default ``speedrun.paths.data_root()``); return its directory.

    Args:
        track: the track whose ``data`` section defines the dataset.
        root: parent directory of prepared datasets.
        progress: show rich progress bars.
        text_encoder, vae: already loaded models to use instead of the track's (tests inject
            small random ones; their id and revision enter the dataset hash).
        source: a local copy of an HF dataset source (mjv6), instead of the hub.
        rank, world_size: this process's share of the shards; default from torch.distributed.
        examples_per_shard: shard size override (default: about ``SHARD_BYTES`` per shard).
        device: where the encoders run (default CUDA if available).

    Returns:
        The dataset directory, complete with its manifest unless other ranks (without a process
        group) still have shards to write.
    """
    if track.data.representation == "pixels" and vae is not None:
        raise SpeedrunError(f"track '{track.id}' trains on pixels; it takes no VAE")
    rank, world_size, distributed = _rank_and_world(rank, world_size)
    text = _text_info(track, text_encoder)
    definition = dataset_definition(track, text_encoder=text_encoder, vae=vae, examples_per_shard=examples_per_shard)
    out = _dir_for(track, root, definition)
    try:
        prepared = lookup(out / MANIFEST_NAME) == "file"
    except OSError as exc:  # a name too long, or a folder that may not be entered
        raise SpeedrunError(
            f"{out}: cannot look for the dataset there ({exc.strerror or exc}); choose another folder with "
            "--data-dir or $SPEEDRUN_DATA_DIR"
        ) from None
    if prepared:
        manifest = read_manifest(out)
        if manifest.dataset_hash != canonical_hash(definition):
            raise SpeedrunError(
                f"{out / MANIFEST_NAME}: dataset_hash does not match the track's data definition; "
                f"delete {out} and prepare again"
            )
        _check_pins(track, {split: entry.definition_hash for split, entry in manifest.splits.items()})
        verify(out)
        return out

    problem = unusable_part(out)  # checked before the encoders load: they take minutes at prx-256
    if problem is not None:
        raise SpeedrunError(
            f"{out}: cannot prepare the dataset there: {problem}; choose another folder with --data-dir or "
            "$SPEEDRUN_DATA_DIR"
        )
    if track.data.dataset == "shapes":
        data_source: Any = _ShapesSource(track)
    else:
        mjv6 = _mjv6()
        data_source = mjv6.Mjv6Source(
            mjv6.load_source(track.data.source, source), track.data.image_size, _split_counts(track)
        )
    models = _Models(track, text_encoder, vae, device or _default_device(distributed))
    jobs = _jobs(data_source, definition["examples_per_shard"])
    mine = [job for k, job in enumerate(jobs) if k % world_size == rank]
    out.mkdir(parents=True, exist_ok=True)
    with _progress_bar(progress) as bar:
        tasks = {}
        for split in SPLITS:
            total = sum(j.count for j in mine if j.split == split)
            if bar is not None and total:
                tasks[split] = bar.add_task(f"{out.name} {split}", total=total)
        # Shards another prepare of this folder is writing are left for a second pass, by when
        # they are usually written: two prepares started together share the work.
        advance = {split: _advancer(bar, tasks.get(split)) for split in SPLITS}
        deferred = []
        for job in mine:
            with shard_lock(out, job.split, job.name, on_wait=None) as held:
                if held:
                    _prepare_shard(out, job, data_source, models, track, advance[job.split])
                else:
                    deferred.append(job)
        for job in deferred:
            with shard_lock(out, job.split, job.name, on_wait=_say_waiting):
                _prepare_shard(out, job, data_source, models, track, advance[job.split])
    if distributed:
        torch.distributed.barrier()
    if not distributed or rank == 0:
        _finalize(out, track, jobs, models, definition, text)
    if distributed:
        torch.distributed.barrier()
    return out
