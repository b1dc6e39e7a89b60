"""Checkpoints ``<run>/checkpoints/step-00001000/``: ``model.safetensors`` (heads under ``components.<name>.*``),
``optimizer.pt``, ``rng.pt``, and ``meta.json`` last (the sha256 of the others and of its own fields). Renamed into
place before ``latest`` moves, so a killed process never leaves a half-written one that looks complete."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from speedrun.errors import SpeedrunError, WriteFailed, format_validation_error
from speedrun.fileio import atomic_write_text, sha256_file, temp_name
from speedrun.results import CheckpointMeta

COMPONENT_PREFIX = "components."
META_DIGEST = "meta_sha256"
STEP_NAME = re.compile(r"step-\d{8}")
OS_ERROR = re.compile(r"\(os error (\d+)\)")  # an errno as Rust's std::io::Error shows it (safetensors' writer)


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


def _save(write: Callable[[Any, str], Any], obj: Any, path: Path) -> None:
    """``write(obj, path)`` by safetensors or torch.save, whose failed writes (a full disk, past the file-size
    limit) carry no OSError: raised as the OSError behind them; any other error as it is."""
    try:
        write(obj, str(path))
    except (SafetensorError, RuntimeError) as exc:
        # safetensors names the errno; torch's stream error does not: the write failed if the file refuses one
        # more byte too, and the refusal says why (after another fault, a CUDA error say, the byte goes in).
        if code := OS_ERROR.search(str(exc)):
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from exc
        try:
            with open(path, "ab") as handle:
                handle.write(b"\0")
        except OSError as refused:
            raise OSError(refused.errno, refused.strerror, str(path)) from exc
        raise


def write_checkpoint(
    root: Path, meta: CheckpointMeta, tensors: dict[str, torch.Tensor], optim_state: dict[str, Any], rng: dict[str, Any]
) -> Path:
    """Write checkpoint ``meta.step`` under ``root`` (``tensors``: denoiser and ``components.*`` heads) and point
    ``latest`` at it; a failed write removes its partial copy and raises ``WriteFailed``."""
    final = root / f"step-{meta.step:08d}"
    tmp = temp_name(final)
    # One process writes a run's checkpoints: a temporary directory here is a killed writer's leftover.
    for stale in root.glob(".step-*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        _save(save_file, {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / "model.safetensors")
        _save(torch.save, optim_state, tmp / "optimizer.pt")
        _save(torch.save, rng, tmp / "rng.pt")
        files = {name: sha256_file(tmp / name) for name in ("model.safetensors", "optimizer.pt", "rng.pt")}
        keys = sorted(k for k in tensors if k.startswith(COMPONENT_PREFIX))
        data = meta.model_copy(update={"files": files, "component_keys": keys}).model_dump()
        data[META_DIGEST] = _meta_digest(data)  # a flipped bit in the step or loader state is caught on read
        atomic_write_text(tmp / "meta.json", json.dumps(data, indent=2, sort_keys=True))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except (OSError, WriteFailed) as exc:
        # Disk full mid-write: drop the partial copy; the previous checkpoint and ``latest`` are untouched.
        shutil.rmtree(tmp, ignore_errors=True)
        reason = exc.reason if isinstance(exc, WriteFailed) else exc.strerror or str(exc)
        raise WriteFailed(final, reason, "the partial copy was removed") from exc
    atomic_write_text(root / "latest", final.name + "\n")
    return final


def load_checkpoint(path: Path, device: torch.device) -> tuple[CheckpointMeta, dict[str, torch.Tensor], Any, Any]:
    """(meta, tensors, optimizer state, rng states) of the verified checkpoint ``path``."""
    meta = read_meta(path)
    tensors = load_file(str(path / "model.safetensors"), device=str(device))
    # weights_only: a checkpoint directory copied from elsewhere cannot run code when resumed.
    optim_state = torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
    rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
    return meta, tensors, optim_state, rng


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
