"""prepare: a track's ``data`` section -> shards, the track's vision teacher if it has one
(``speedrun.data.teacher``, trained on the train shards) and ``manifest.json`` (``speedrun.data.shards``) in
``<root>/<dataset>-<size>-<hash of the definition>/``. Idempotent (with a manifest it only re-hashes) and
resumable (complete shards are re-hashed and kept); prepares of one folder started together share the shards.
"""

from __future__ import annotations

import functools
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from speedrun.data import imagefolder, mjv6, shapes, shards, teacher
from speedrun.data.shards import MANIFEST_NAME, NULL_DIR, SPLITS, TEACHER_FILE, ShardEntry, TextEncoderInfo
from speedrun.data.text import TextEncoder, get_text_encoder, text_encoder_class
from speedrun.data.vae import FLUX_DOWNSAMPLE, FLUX_LATENT_CHANNELS, FluxVAE, load_flux_vae, parse_ref
from speedrun.errors import SpeedrunError
from speedrun.fileio import atomic_write, atomic_write_json
from speedrun.locks import shard_lock
from speedrun.paths import data_root, lookup, unusable_part
from speedrun.tracks import Track, canonical_hash

# Bytes a shard holds: few files, yet built in memory and little lost when a prepare is interrupted.
SHARD_BYTES = 256 << 20
# Distinct captions per text-encoder call from prepare (bounds float32 temporaries).
_TEXT_CHUNK = 512
_ELSEWHERE = "choose another folder with --data-dir or $SPEEDRUN_DATA_DIR"


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

    def __init__(self, track: Track, counts: dict[str, int]) -> None:
        data = track.data
        if data.source != shapes.SOURCE_ID:
            raise SpeedrunError(f"track '{track.id}': data.source '{data.source}' is not '{shapes.SOURCE_ID}'")
        self.image_size, self.counts = data.image_size, counts

    def split_size(self, split: str) -> int:
        return self.counts[split]

    def load(self, split: str, start: int, count: int) -> tuple[np.ndarray, list[str], list[dict[str, Any]]]:
        images, captions, specs = shapes.examples(split, start, count, self.image_size)
        return images, captions, [s.to_json() for s in specs]


class _Models:
    """The text encoder and VAE, loaded on first use (a verified dataset needs neither) unless given."""

    def __init__(self, track: Track, text_encoder: TextEncoder | None, vae: FluxVAE | None, device: str) -> None:
        self.track, self.device = track, device
        if text_encoder is not None:
            self.text = text_encoder
        if vae is not None:
            self.vae = vae

    @functools.cached_property
    def text(self) -> TextEncoder:
        data = self.track.data
        encoder = get_text_encoder(data.text_encoder, data.text_max_tokens, self.device)
        if encoder.dim != (expected := text_encoder_class(data.text_encoder).dim):
            raise SpeedrunError(f"the weights loaded as text encoder '{data.text_encoder}' ({encoder.id}) are "
                                f"{encoder.dim} wide, not {expected}: they are not that model")
        return encoder

    @functools.cached_property
    def vae(self) -> FluxVAE:
        return load_flux_vae(self.track.data.vae, self.device)


def _examples_per_shard(track: Track, text: TextEncoderInfo, vae: FluxVAE | None) -> int:
    size = track.data.image_size
    x_bytes = size * size * 3
    if track.data.representation != "pixels":
        side = size // FLUX_DOWNSAMPLE
        channels, h, w = vae.latent_shape(size) if vae else (FLUX_LATENT_CHANNELS, side, side)
        x_bytes += 2 * channels * h * w  # float16 latents, beside the images the reference split keeps
    # float16 embeddings + bool mask + int64 index + 32-byte digest
    per_example = x_bytes + text.max_tokens * (2 * text.dim + 1) + 8 + 32
    return max(1, SHARD_BYTES // per_example)


def dataset_definition(
    track: Track, *, text_encoder: TextEncoder | None = None, vae: FluxVAE | None = None,
    examples_per_shard: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """What a prepared dataset is a function of; its canonical hash names the dataset directory."""
    data = track.data
    # A loaded encoder and its registered class carry the same identity attributes.
    encoder = text_encoder or text_encoder_class(data.text_encoder)
    text = TextEncoderInfo(
        key=data.text_encoder, id=encoder.id, revision=encoder.revision, dim=encoder.dim,
        max_tokens=data.text_max_tokens, precision=encoder.precision,
    )  # fmt: skip
    # split_hashes check a dataset; train_images and teacher at their defaults (False, None) are left out so
    # that datasets prepared before the fields existed keep their directory.
    exclude = {"split_hashes"} | {field for field in ("train_images", "teacher") if not getattr(data, field)}
    if data.dataset == "imagefolder":
        source = imagefolder.definition(track)
    else:
        source = _ShapesSource.definition if data.dataset == "shapes" else mjv6.Mjv6Source.definition
    if data.representation == "pixels":
        vae_id = None
    else:
        repo, revision, subfolder = (vae.id, vae.revision, None) if vae else parse_ref(data.vae)
        vae_id = {"id": repo + (f"#{subfolder}" if subfolder else ""), "revision": revision}
    return {
        "format_version": shards.FORMAT_VERSION,
        "data": data.model_dump(mode="json", exclude=exclude),
        "source": source,
        "text_encoder": text.model_dump(),
        "vae": vae_id,
        "examples_per_shard": examples_per_shard or _examples_per_shard(track, text, vae),
    }


def dataset_dir(track: Track, root: Path | None = None, definition: dict | None = None, **kwargs: Any) -> Path:
    """Where ``prepare(track, root, **kwargs)`` puts the dataset; ``kwargs`` are ``dataset_definition``'s."""
    definition = definition or dataset_definition(track, **kwargs)
    return data_root(root) / f"{track.data.dataset}-{track.data.image_size}-{canonical_hash(definition)[:8]}"


def _jobs(source: Any, per_shard: int) -> list[_Job]:
    sizes = {split: source.split_size(split) for split in SPLITS}
    return [_Job(split, k, start, min(per_shard, n - start))
            for split, n in sizes.items() for k, start in enumerate(range(0, n, per_shard))]  # fmt: skip


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
    digests = b"".join(shards.example_digest(job.start + i, c, img) for i, (c, img) in enumerate(zip(captions, images)))
    text, mask = _encode_captions(models.text, captions, advance)
    index = np.arange(job.start, job.start + job.count, dtype=np.int64)
    # The key order is the file order in shard.json, hence in the manifest.
    arrays = {"text": text, "mask": mask, "index": index, "digests": np.frombuffer(digests, np.uint8).reshape(-1, 32)}
    if track.data.representation == "pixels":
        arrays["x"] = images
    else:
        arrays["x"] = models.vae.encode(images).numpy().astype(np.float16)
        if job.split == "reference" or (job.split == "train" and track.data.train_images):
            arrays["images"] = images
    return arrays, {"captions": captions} if specs is None else {"captions": captions, "specs": specs}


def _write_null_text(out: Path, encoder: TextEncoder) -> None:
    base = out / NULL_DIR
    if (base / "text.npy").is_file() and (base / "mask.npy").is_file():
        return
    emb, mask = encoder.encode([""])
    for name, array in (("text.npy", emb[0].numpy().astype(np.float16)), ("mask.npy", mask[0].numpy())):
        atomic_write(base / name, functools.partial(shards.save_npy, array=array))


def _check_pins(track: Track, split_hashes: dict[str, str]) -> None:
    pins = track.data.split_hashes
    if unknown := sorted(set(pins) - set(SPLITS)):
        raise SpeedrunError(f"track '{track.id}': data.split_hashes has unknown split(s) {unknown}; splits: {SPLITS}")
    for split, pinned in pins.items():
        if split_hashes[split] != pinned:
            raise SpeedrunError(f"track '{track.id}': data.split_hashes.{split} pins {pinned} but the prepared "
                                f"{split} split hashes to {split_hashes[split]}; the generator or source no longer "
                                "produces the track's data")


def _finalize(
    out: Path, track: Track, jobs: list[_Job], models: _Models, definition: dict[str, Any], progress: bool
) -> None:
    """Train the track's teacher (if any) and write the manifest, every shard being on disk."""
    entries: dict[str, list[ShardEntry]] = {split: [] for split in SPLITS}
    for job in jobs:
        entries[job.split].append(shards.read_shard_entry(out / job.split, job.name))
    _write_null_text(out, models.text)
    hashes = {
        split: shards.combine_digests(b"".join(np.load(out / split / e.name / "digests.npy").tobytes() for e in got))
        for split, got in entries.items()
    }
    _check_pins(track, hashes)
    first = np.load(out / "train" / entries["train"][0].name / "x.npy", mmap_mode="r")
    representation = "pixels" if track.data.representation == "pixels" else "latents"
    x_shape = (first.shape[3], first.shape[1], first.shape[2]) if representation == "pixels" else tuple(first.shape[1:])
    fields = shards.VaeInfo.model_fields
    vae = shards.VaeInfo(**{k: getattr(models.vae, k) for k in fields}) if representation == "latents" else None
    manifest = shards.Manifest(
        format_version=shards.FORMAT_VERSION, dataset_hash=canonical_hash(definition), definition=definition,
        representation=representation, image_size=track.data.image_size, x_shape=x_shape, vae=vae,
        text_encoder=TextEncoderInfo(**definition["text_encoder"]),
        null_text={name: shards.file_entry(out / NULL_DIR / name) for name in ("text.npy", "mask.npy")},
        splits={
            split: shards.SplitEntry(num_examples=sum(e.count for e in got), definition_hash=hashes[split], shards=got)
            for split, got in entries.items()
        },
    )  # fmt: skip
    if (spec := track.data.teacher) is not None:
        if progress:
            print(f"{out.name}: training the track's vision teacher ({spec.steps} steps on the CPU)", file=sys.stderr)
        # Only the train split: the validation and reference splits stay unseen by everything that trains.
        path = teacher.write(out, spec, shards.PreparedDataset(out, manifest).split("train"))
        manifest = manifest.model_copy(update={"teacher": {TEACHER_FILE: shards.file_entry(path)}})
    atomic_write_json(out / MANIFEST_NAME, manifest.dump())


def _prepare_shard(
    out: Path, job: _Job, data_source: Any, models: _Models, track: Track, advance: Callable[[float], None]
) -> None:
    """Make shard ``job`` complete in ``out``, reusing a valid copy; the caller holds its lock."""
    split_dir = out / job.split
    for stale in split_dir.glob(f".{job.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    entry = shards.read_shard_entry(split_dir, job.name)
    if entry is not None and (entry.start, entry.count) == (job.start, job.count):
        try:
            shards.check_files(split_dir / job.name, entry.files, rehash=True)
            advance(job.count)
            return
        except SpeedrunError:  # damaged: built again below
            pass
    arrays, documents = _build_shard(job, data_source, models, track, advance)
    shards.write_shard(split_dir, job.name, job.start, arrays, documents)


def _say_waiting(lock: Path) -> None:
    print(f"waiting for another prepare of this data folder to finish a shard ({lock} is locked)", file=sys.stderr)


def prepare(
    track: Track, root: Path | None = None, *, progress: bool = True, text_encoder: TextEncoder | None = None,
    vae: FluxVAE | None = None, source: str | Path | None = None, examples_per_shard: int | None = None,
) -> Path:  # fmt: skip
    """Prepare ``track``'s data under ``root`` (default ``speedrun.paths.data_root()``); return its directory.
    ``text_encoder`` and ``vae`` replace the track's models; ``source`` is a local copy of an mjv6 source."""
    definition = dataset_definition(track, text_encoder=text_encoder, vae=vae, examples_per_shard=examples_per_shard)
    out = dataset_dir(track, root, definition)
    try:
        prepared = lookup(out / MANIFEST_NAME) == "file"
    except OSError as exc:  # a name too long, or a folder that may not be entered
        raise SpeedrunError(f"{out}: cannot look for the dataset there ({exc.strerror or exc}); {_ELSEWHERE}") from None
    if prepared:
        manifest = shards.read_manifest(out)
        _check_pins(track, {split: entry.definition_hash for split, entry in manifest.splits.items()})
        if track.data.teacher is not None:
            teacher.check_recorded(out, manifest)
        shards.verify(out)
        return out

    if (problem := unusable_part(out)) is not None:  # checked before the encoders load: minutes at prx-256
        raise SpeedrunError(f"{out}: cannot prepare the dataset there: {problem}; {_ELSEWHERE}")
    data = track.data
    counts = {split: getattr(data, f"{split}_examples") for split in SPLITS}
    if data.dataset == "shapes":
        data_source: Any = _ShapesSource(track, counts)
    elif data.dataset == "imagefolder":
        data_source = imagefolder.ImageFolderSource(track, counts)
    else:
        data_source = mjv6.Mjv6Source(mjv6.load_source(data.source, source), data.image_size, counts)
    models = _Models(track, text_encoder, vae, "cuda" if torch.cuda.is_available() else "cpu")
    jobs = _jobs(data_source, definition["examples_per_shard"])
    out.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"preparing track '{track.id}' data in {out}: images, captions and text embeddings of "
              f"{', '.join(f'{counts[s]:,} {s}' for s in SPLITS)} examples (once per data folder)",
              file=sys.stderr, flush=True)  # fmt: skip
    columns = TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    with Progress(*columns, disable=not progress) as bar:
        advance = {}
        for split in SPLITS:
            task = bar.add_task(f"{out.name} {split}", total=sum(j.count for j in jobs if j.split == split))
            advance[split] = functools.partial(bar.advance, task)
        # Shards another prepare is writing wait for a second pass: two prepares started together share the work.
        deferred = []
        for job in jobs:
            with shard_lock(out, job.split, job.name, on_wait=None) as held:
                if held:
                    _prepare_shard(out, job, data_source, models, track, advance[job.split])
                else:
                    deferred.append(job)
        for job in deferred:
            with shard_lock(out, job.split, job.name, on_wait=_say_waiting):
                _prepare_shard(out, job, data_source, models, track, advance[job.split])
    _finalize(out, track, jobs, models, definition, progress)
    return out
