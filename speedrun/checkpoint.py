"""Checkpoints ``<run>/checkpoints/step-00001000/``: ``model.safetensors`` (heads under ``components.<name>.*``),
``optimizer.pt``, ``rng.pt``, and ``meta.json`` last (the sha256 of the others and of its own fields). Renamed into
place before ``latest`` moves, so a killed process never leaves a half-written one that looks complete."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from speedrun import distributed
from speedrun.clock import Budget, Paused
from speedrun.errors import SpeedrunError, WriteFailed, format_validation_error
from speedrun.fileio import atomic_write_text, sha256_file
from speedrun.parallel import Parallel
from speedrun.provenance import code_changes
from speedrun.results import CheckpointMeta
from speedrun.runlog import RunLog
from speedrun.tracks import Track

COMPONENT_PREFIX = "components."
META_DIGEST = "meta_sha256"
# The fields of a checkpoint's meta that say where the run stood; a resume continues from them.
RUN_STATE = ("step", "clock_seconds", "warmup_seconds", "val_loss_curve", "eval_checkpoints", "times", "log_bytes")
STEP_NAME = re.compile(r"step-\d{8}")


def _meta_digest(meta: dict[str, Any]) -> str:
    """sha256 of the fields nothing else checks (``files``, ``component_keys``: tools re-saving weights update them)."""
    body = {k: v for k, v in meta.items() if k not in (META_DIGEST, "files", "component_keys")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_meta(path: Path, verify: bool = True) -> CheckpointMeta:
    """Read ``meta.json`` of a checkpoint directory; with ``verify``, re-hash every file it lists."""
    meta_path = path / "meta.json"
    again = f"delete {path} to resume from an earlier checkpoint"
    try:
        data = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise SpeedrunError(f"{path}: not a checkpoint (no meta.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpeedrunError(f"{meta_path}: corrupted ({exc}); {again}") from None
    except OSError as exc:  # a folder of that name, or no permission to read it
        raise SpeedrunError(f"{meta_path}: cannot read it ({exc.strerror or exc}); fix that, or {again}") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise SpeedrunError(f"{meta_path}: corrupted (no file list); {again}")
    if META_DIGEST in data and data[META_DIGEST] != _meta_digest(data):
        raise SpeedrunError(f"{meta_path}: corrupted (its content does not match its sha256); {again}")
    try:
        meta = CheckpointMeta.model_validate(data)
    except ValidationError as exc:
        raise SpeedrunError(f"{format_validation_error(f'{meta_path}: corrupted', exc)}; {again}") from None
    for name, digest in meta.files.items() if verify else ():
        f = path / name
        if not f.is_file() or sha256_file(f) != digest:
            raise SpeedrunError(f"{f}: missing or corrupted (sha256 mismatch); {again}")
    return meta


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint ``latest`` names, else the newest ``step-*`` (only complete ones get that name), else None."""
    pointer = root / "latest"
    if pointer.is_file():
        name = pointer.read_bytes().decode("utf-8", "replace").strip()
        if not STEP_NAME.fullmatch(name):
            raise SpeedrunError(
                f"{pointer}: corrupted (it should name a step-NNNNNNNN directory); delete it to resume "
                "from the newest checkpoint directory"
            )
        if (root / name).is_dir():
            return root / name
    steps = sorted(p for p in root.glob("step-*") if STEP_NAME.fullmatch(p.name) and p.is_dir())
    return steps[-1] if steps else None


def discard_checkpoints(root: Path) -> None:
    """Delete every checkpoint under ``root``, for a seed started over (a plain rerun must not resume the old run)."""
    if not os.path.lexists(root):
        return
    try:
        shutil.rmtree(root)
    except OSError as exc:
        raise SpeedrunError(
            f"{exc.filename or root}: cannot delete the old checkpoints to start the seed over "
            f"({exc.strerror or exc}); delete {root} yourself, then run the same command again"
        ) from None


class Checkpointer:
    """The checkpoints of one run: when one is due, and the run's state (weights, RNG streams, loader) in and out."""

    def __init__(
        self, run_dir: Path, track: Track, code: dict[str, Any], parallel: Parallel, loader: Any, gen: torch.Generator
    ) -> None:
        self.run_dir, self.root, self.track, self.code = run_dir, run_dir / "checkpoints", track, code
        self.parallel, self.dist, self.loader, self.gen = parallel, parallel.dist, loader, gen

    def to_resume(self, resume: bool) -> Path | None:
        """The checkpoint to resume from (None: start at step 0); a run started over deletes the old ones."""
        if resume:
            return latest_checkpoint(self.root)
        if self.dist.is_main:  # for a process of its own; under torchrun the launcher has already done it
            discard_checkpoints(self.root)
        return None

    def after(
        self, done: int, last: bool, final: bool, record: CheckpointMeta, optimizer: torch.optim.Optimizer,
        budget: Budget, log: RunLog,
    ) -> None:  # fmt: skip
        """Checkpoint step ``done`` (clock paused) if due: every ``checkpoint_every``, evaluation and ``final`` step."""
        evaluated = done % self.track.eval.interval == 0 or last
        if not (evaluated or final or done % self.track.train.checkpoint_every == 0):
            return
        with Paused(budget.clock):
            c0 = time.perf_counter()
            if evaluated:
                record.eval_checkpoints.append(f"step-{done:08d}")
            record.times.budget_spent = budget.spent_at == done
            # The log as of this checkpoint: a resume truncates it back to here.
            record.clock_seconds, record.log_bytes = budget.run_clock(), log.checkpoint()
            self.save(record, optimizer)
            record.times.checkpoint_seconds += time.perf_counter() - c0

    def save(self, record: CheckpointMeta, optimizer: torch.optim.Optimizer) -> None:
        """Write checkpoint ``record.step`` and point ``latest`` at it (rank 0; a collective under FSDP)."""
        model_state, optim_state = self.parallel.model_state(), self.parallel.optim_state(optimizer)
        if self.dist.is_main:
            self._write(record, model_state, optim_state)
        distributed.barrier(self.dist)

    def _write(self, meta: CheckpointMeta, model_state: dict[str, torch.Tensor], optim_state: dict[str, Any]) -> None:
        gen = self.gen
        rng = {"torch": torch.get_rng_state(), "generator": gen.get_state(), "generator_device": gen.device.type}
        if self.dist.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.dist.device)
        meta.loader = self.loader.state_dict()
        final = self.root / f"step-{meta.step:08d}"
        tmp = self.root / f".{final.name}.tmp-{os.getpid()}"
        # One process writes a run's checkpoints: a temporary directory here is a killed writer's leftover.
        for stale in self.root.glob(".step-*.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            heads = self.parallel.heads.items()
            heads_state = {f"{COMPONENT_PREFIX}{name}.{k}": v for name, h in heads for k, v in h.state_dict().items()}
            tensors = {k: v.detach().contiguous().cpu() for k, v in {**model_state, **heads_state}.items()}
            save_file(tensors, str(tmp / "model.safetensors"))
            torch.save(optim_state, tmp / "optimizer.pt")
            torch.save(rng, tmp / "rng.pt")
            files = {name: sha256_file(tmp / name) for name in ("model.safetensors", "optimizer.pt", "rng.pt")}
            data = meta.model_copy(update={"files": files, "component_keys": sorted(heads_state)}).model_dump()
            data[META_DIGEST] = _meta_digest(data)  # a flipped bit in the step or loader state is caught on read
            atomic_write_text(tmp / "meta.json", json.dumps(data, indent=2, sort_keys=True))
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except (OSError, SpeedrunError) as exc:
            # Disk full mid-write: drop the partial copy; the previous checkpoint and ``latest`` are untouched.
            shutil.rmtree(tmp, ignore_errors=True)
            cause = exc.__cause__ if isinstance(exc, SpeedrunError) else exc  # fileio wraps the OSError
            reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
            raise WriteFailed(final, reason, "the partial copy was removed") from exc
        atomic_write_text(self.root / "latest", final.name + "\n")

    def restore(self, path: Path, record: CheckpointMeta, optimizer: torch.optim.Optimizer) -> CheckpointMeta:
        """Load checkpoint ``path`` into the run's state; returns ``record`` continued from its step."""
        device = self.dist.device
        meta = read_meta(path)
        tensors = load_file(str(path / "model.safetensors"), device=str(device))
        # weights_only: a checkpoint directory copied from elsewhere cannot run code when resumed.
        optim_state = torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
        rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
        if meta.track_hash != self.track.content_hash:
            raise SpeedrunError(
                f"{path}: written for another version of track '{self.track.id}'; "
                f"start over with --no-resume or delete {self.run_dir}"
            )
        if changed := code_changes(meta.code, self.code):
            raise SpeedrunError(
                f"{path}: written by other code ({'; '.join(map(str, changed))}), and a run's steps must all come "
                f"from the code its results name; restore that code to resume, or start over with --no-resume"
            )
        if meta.world_size != self.dist.world_size:
            raise SpeedrunError(
                f"{path}: written by {meta.world_size} processes, resuming with {self.dist.world_size}; "
                "resume with the same --nproc"
            )
        heads: dict[str, dict[str, torch.Tensor]] = {name: {} for name in self.parallel.heads}
        for key in [k for k in tensors if k.startswith(COMPONENT_PREFIX)]:
            name, _, rest = key[len(COMPONENT_PREFIX) :].partition(".")
            heads.setdefault(name, {})[rest] = tensors.pop(key)
        self.parallel.load_model_state(tensors)
        for name, head in self.parallel.heads.items():
            head.load_state_dict(heads[name], strict=True)
        self.parallel.load_optim_state(optimizer, optim_state)
        self.loader.load_state_dict(meta.loader)
        torch.set_rng_state(rng["torch"])
        restore_generator(self.gen, rng, path)
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)
        return record.model_copy(update={k: getattr(meta, k) for k in RUN_STATE})


def restore_generator(gen: torch.Generator, rng: dict[str, Any], path: Path) -> None:
    """Set ``gen`` from ``rng.pt``, refusing another device kind's (Mersenne Twister vs Philox states)."""
    saved = rng.get("generator_device", "cpu")
    if saved != gen.device.type:
        raise SpeedrunError(
            f"{path}: written by a run on {saved}, resumed on {gen.device.type}; a run's training randomness "
            f"is drawn on its device, so resume on {saved}, or start over with --no-resume"
        )
    gen.set_state(rng["generator"])


def load_denoiser_strict(path: Path, model: nn.Module) -> CheckpointMeta:
    """Load checkpoint ``path``'s denoiser weights (no declared component keys) into ``model`` strictly; its meta."""
    meta = read_meta(path)
    tensors = load_file(str(path / "model.safetensors"))
    declared = set(meta.component_keys)
    if undeclared := sorted(k for k in tensors if k.startswith(COMPONENT_PREFIX) and k not in declared):
        raise SpeedrunError(f"{path}: component weights not declared in meta.json: {undeclared[:5]}")
    weights = {k: v for k, v in tensors.items() if k not in declared}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise SpeedrunError(
            f"{path}: weights do not match the track's architecture "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    if bad_shapes := [k for k in expected if expected[k].shape != weights[k].shape]:
        raise SpeedrunError(f"{path}: weights with the wrong shape for the track's architecture: {bad_shapes[:5]}")
    model.load_state_dict(weights, strict=True)
    return meta
