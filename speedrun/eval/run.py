"""``speedrun eval``: load a checkpoint's denoiser (strict keys), sample from the reference split's captions
with the track's sampler and score the track's metrics against cached reference statistics. Sample ``i``'s
noise depends on (eval seed, i) alone: results do not depend on batch size or process count. Imports no
component or submission code."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from speedrun import distributed
from speedrun.checkpoint import latest_checkpoint, load_denoiser_strict, read_meta
from speedrun.errors import SpeedrunError
from speedrun.eval.scores import EvalInputs, score
from speedrun.fileio import NAME_MAX, TEMP_NAME_EXTRA, atomic_write, atomic_write_text, sha256_file
from speedrun.flow import euler_sample, keyed_generator, velocity_from_prediction
from speedrun.model import build_model
from speedrun.paths import cache_root, data_root, lookup, unusable_part
from speedrun.protocol import StepState
from speedrun.provenance import harness_sha256
from speedrun.results import EvalReport
from speedrun.tracks import Track, canonical_hash, load_track

if TYPE_CHECKING:
    from speedrun.data.source import TrainData

GRID_SAMPLES = 64
# The grid PNG is ~1360 px wide, shown 1:1 across the leaderboard page: captions at 8 pt (11 px) stay readable.
GRID_COLUMNS, GRID_CELL_IN, GRID_GAP_IN, GRID_DPI = 8, 1.7, 0.05, 100
GRID_FONT_PT, GRID_CAPTION_CHARS = 8, 26  # 26 characters of 8 pt fit the cell's 1.6 inches


def sample_noise(seed: int, index: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The starting noise of evaluation sample ``index``, from (seed, index) only."""
    return torch.randn(shape, generator=keyed_generator(f"eval-noise:{seed}:{index}"))


def protocol(track: Track) -> dict[str, Any]:
    """What decides the numbers of an evaluation (hashed into every metrics file)."""
    e = track.eval
    return {
        "track": track.id,
        "version": track.version,
        "data": track.data.model_dump(mode="json"),
        "model": track.model.config,
        "samples": e.samples,
        "sampler": e.sampler,
        "sampler_steps": e.sampler_steps,
        "cfg_scale": e.cfg_scale,
        "seed": e.seed,
        "extractors": e.extractors,
        "extract_batch": e.batch_size,
        "val_loss": e.val_loss.model_dump(mode="json"),
    }


class Sampler:
    def __init__(self, track: Track, model: torch.nn.Module, prediction: str, data: TrainData, device: torch.device):
        self.track, self.model, self.prediction, self.device = track, model, prediction, device
        self.ref = data.dataset.split(track.eval.reference_split)
        self.x_shape = data.x_shape
        self.null_text, self.null_mask = (t.to(device) for t in data.null_embedding())
        self.autocast = device.type == "cuda" and track.train.precision == "bf16"
        self.vae = None
        if track.data.representation == "flux-vae":
            from speedrun.data.vae import load_flux_vae

            self.vae = load_flux_vae(track.data.vae, device=device)

    def model_fn(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            pred = self.model(x, t, text, mask, state=StepState(training=False)).float()
        return velocity_from_prediction(self.prediction, pred, x, t)

    def captions(self, n: int) -> list[str]:
        """The prompts of samples 0..n-1 (sample ``i`` has reference caption ``i % len(ref)``)."""
        return self.ref.captions(np.arange(n) % len(self.ref))

    def generate(self, indices: list[int]) -> np.ndarray:
        """uint8 (n, H, W, 3) images for sample ``indices`` (one round-and-clamp)."""
        from speedrun.data.loader import load_batch, to_uint8

        if not indices:
            return np.zeros((0, self.track.data.image_size, self.track.data.image_size, 3), np.uint8)
        batch = load_batch(self.ref, np.array(indices) % len(self.ref), self.device)
        noise = torch.stack([sample_noise(self.track.eval.seed, i, self.x_shape) for i in indices]).to(self.device)
        x0 = euler_sample(
            self.model_fn, noise, batch.text, batch.text_mask, self.null_text, self.null_mask,
            self.track.eval.sampler_steps, self.track.eval.cfg_scale,
        )
        return (to_uint8(x0) if self.vae is None else self.vae.decode(x0)).cpu().numpy()


def generate_all(sampler: Sampler, n: int, batch_size: int) -> np.ndarray:
    """All ``n`` samples; with torch.distributed initialised each rank makes indices r::W and rank 0
    gathers them back in index order."""
    import torch.distributed as dist

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    mine = list(range(rank, n, world))
    parts = [sampler.generate(mine[i : i + batch_size]) for i in range(0, len(mine), batch_size)]
    local = np.concatenate(parts) if parts else sampler.generate([])
    if world == 1:
        return local
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (mine, local))
    out = np.zeros((n, *local.shape[1:]), dtype=np.uint8)
    for idx, imgs in gathered:
        if idx:
            out[np.array(idx)] = imgs
    return out


def resolve_checkpoint(path: Path) -> Path:
    """The checkpoint directory ``path`` stands for: itself, or for a run's ``checkpoints`` folder (or
    its ``latest`` file) the one ``latest_checkpoint`` picks, as the trainer would resume from it."""
    path = Path(path)
    try:
        if lookup(path / "meta.json") == "file":
            return path
        found = lookup(path)
        if path.name == "latest" and found == "file":
            root = path.parent
        elif found == "folder" and lookup(path / "latest") == "file":
            root = path
        else:
            raise SpeedrunError(
                f"{path}: {'not found' if found is None else 'not a checkpoint'}; expected a checkpoint directory "
                "(with meta.json, e.g. <run>/checkpoints/step-00001000) or a run's checkpoints folder (with a "
                "`latest` file, e.g. <run>/checkpoints)"
            )
    except OSError as exc:  # a name too long, or a folder that may not be entered
        raise SpeedrunError(f"{path}: cannot look for a checkpoint there ({exc.strerror or exc})") from None
    checkpoint = latest_checkpoint(root)
    if checkpoint is None:
        raise SpeedrunError(
            f"{root / 'latest'}: names no existing checkpoint directory and {root} holds no "
            "step-NNNNNNNN directory; pass a checkpoint directory instead"
        )
    return checkpoint


def check_out(out: Path) -> None:
    """Raise now, not after minutes of sampling, if the metrics JSON ``out`` or the grid beside it
    (``out`` with suffix .png) could not be written."""
    grid = out.with_suffix(".png")
    if grid == out:
        raise SpeedrunError(f"--out {out}: the sample grid is written to <out>.png, so --out must not end in .png")
    for path in (out, grid):  # the writer's temporary file beside it would fail only after the evaluation
        excess = len(os.fsencode(path.name)) + TEMP_NAME_EXTRA - NAME_MAX
        if excess > 0:
            raise SpeedrunError(f"--out {out}: the file name {path.name} is too long; shorten it by {excess} bytes")
    # The writer creates missing folders: the nearest one that exists must be a writable folder.
    problem = unusable_part(out.parent)
    if problem is not None:
        raise SpeedrunError(f"--out {out}: {problem}, so {out} cannot be written")
    for path in (out, grid):
        try:
            found = lookup(path)
        except OSError as exc:  # a symbolic link loop, say
            raise SpeedrunError(f"--out {out}: {path} cannot be used ({exc.strerror or exc})") from None
        if found == "folder":
            raise SpeedrunError(f"--out {out}: {path} is a directory; --out names the metrics JSON file to write")


def evaluate_checkpoint(
    checkpoint: Path, track_id: str, *, out: Path | None = None, device: str | None = None,
    data_dir: Path | None = None, batch_size: int | None = None,
) -> Path:  # fmt: skip
    """Evaluate ``checkpoint`` (see ``resolve_checkpoint``) under track ``track_id``; write and
    return the metrics JSON path (default: ``metrics.json`` in the checkpoint directory)."""
    from speedrun.data.source import TrainData

    t_start = time.perf_counter()
    track = load_track(track_id)
    checkpoint = resolve_checkpoint(checkpoint)
    out = Path(out) if out else checkpoint / "metrics.json"
    check_out(out)
    meta = read_meta(checkpoint)
    if meta.track != track.id:
        raise SpeedrunError(f"{checkpoint}: trained on track '{meta.track}', not '{track.id}'")
    # Opened before the device and the model: unprepared data is reported (with the prepare
    # command for this data dir) without that work.
    data = TrainData.open(track, data_root(data_dir))
    d = distributed.setup(device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # sampling and features
    model = build_model(track.model.config, text_dim=data.text_dim)
    load_denoiser_strict(checkpoint, model)
    model.to(d.device).eval()
    # Hashed before sampling: the code and weights that scored it.
    identity = {
        "step": meta.step,
        "track": track.id,
        "track_hash": track.content_hash,
        "checkpoint": str(checkpoint),
        "model_sha256": sha256_file(checkpoint / "model.safetensors"),
        "prediction": meta.prediction,
        "protocol_hash": canonical_hash(protocol(track)),
        "harness_sha256": harness_sha256(),
        "samples": track.eval.samples,
    }
    sections = ("metrics", "unavailable", "reference_stats_sha256", "extractor_weights", "seconds", "details")
    report: dict[str, dict] = {name: {} for name in sections}
    sampler = Sampler(track, model, meta.prediction, data, d.device)
    t0 = time.perf_counter()
    images = generate_all(sampler, track.eval.samples, batch_size or track.eval.batch_size)
    report["seconds"]["sampling"] = time.perf_counter() - t0
    if d.is_main:
        inputs = EvalInputs(
            track=track, images=images, captions=sampler.captions(len(images)), reference=sampler.ref,
            reference_hash=track.data.split_hashes.get(track.eval.reference_split), sampler=sampler, data=data,
            device=d.device, cache=cache_root(), protocol_hash=identity["protocol_hash"],
        )  # fmt: skip
        score(inputs, report)
        report["seconds"]["total"] = time.perf_counter() - t_start
        grid = out.with_suffix(".png")
        write_grid(images[:GRID_SAMPLES], sampler.captions(min(GRID_SAMPLES, len(images))), grid)
        typed = EvalReport(**identity, **report, grid=grid.name)
        # json.dumps, not model_dump_json: the file keeps today's sorted keys, float spelling and NaN.
        atomic_write_text(out, json.dumps(typed.model_dump(), indent=2, sort_keys=True))
    distributed.teardown()
    return out if d.is_main else checkpoint


def write_grid(images: np.ndarray, captions: list[str], path: Path) -> None:
    """A PNG grid of samples, ``GRID_COLUMNS`` a row, each below its whole prompt wrapped to the cell's width."""
    from matplotlib.figure import Figure

    cols = min(GRID_COLUMNS, len(images))
    texts = [textwrap.fill(cap, GRID_CAPTION_CHARS) for cap in captions]
    rows = [range(i, min(i + cols, len(images))) for i in range(0, len(images), cols)]
    # A row is as tall as its longest caption needs: its lines (1.25 x the font size) and one for the gap.
    line = GRID_FONT_PT * 1.25 / 72  # inches
    heights = [GRID_CELL_IN + line * (2 + max(texts[i].count("\n") for i in row)) for row in rows]
    width, height = cols * GRID_CELL_IN, sum(heights)
    fig = Figure(figsize=(width, height))
    side = GRID_CELL_IN - 2 * GRID_GAP_IN
    for r, row in enumerate(rows):
        bottom = height - sum(heights[: r + 1]) + GRID_GAP_IN
        for col, i in enumerate(row):
            left = col * GRID_CELL_IN + GRID_GAP_IN
            ax = fig.add_axes((left / width, bottom / height, side / width, side / height))
            ax.imshow(images[i], interpolation="nearest")
            ax.set_title(texts[i], fontsize=GRID_FONT_PT, linespacing=1.1, pad=2)
            ax.axis("off")
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=GRID_DPI))
