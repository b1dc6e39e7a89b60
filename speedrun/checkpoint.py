"""Checkpoints: written atomically, verified on read, loaded strictly.

Layout of ``<run>/checkpoints/step-00001000/``:
  model.safetensors   denoiser weights, plus component heads under ``components.<name>.*``
  optimizer.pt        optimizer state (torch.save)
  rng.pt              torch CPU/CUDA RNG states and the trainer's generator state (with its device kind)
  meta.json           step, clock seconds, loader state, prediction kind, the keys components own,
                      model config, track hash; written last, with the sha256 of every other file

A checkpoint directory is built under a temporary name and renamed into place, and ``latest`` is
replaced atomically after it, so a process killed at any point leaves either the previous or the
new checkpoint, never a half-written one that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from speedrun.errors import SpeedrunError
from speedrun.fileio import atomic_write_text, sha256_file

COMPONENT_PREFIX = "components."
FORMAT_VERSION = 1
META_DIGEST = "meta_sha256"
STEP_NAME = re.compile(r"step-\d{8}")


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def save_checkpoint(
    root: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    heads: dict[str, nn.Module],
    optimizer_state: dict[str, Any],
    meta: dict[str, Any],
    rng: dict[str, Any],
    *,
    rerun: str = "run the command again",
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and point ``root/latest`` at it.

    ``model_state`` and ``optimizer_state`` are full (unsharded) state dicts. Should a write fail,
    the message says to ``rerun`` (``rerun_advice``) once its cause is fixed.
    """
    final = step_dir(root, step)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    # One process (rank 0) writes a run's checkpoints, so any temporary directory here is the
    # leftover of a killed writer: never read, but as large as a checkpoint, so removed.
    for stale in root.glob(".step-*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
        component_keys = []
        for name, head in heads.items():
            for k, v in head.state_dict().items():
                key = f"{COMPONENT_PREFIX}{name}.{k}"
                tensors[key] = v.detach().contiguous().cpu()
                component_keys.append(key)
        save_file(tensors, str(tmp / "model.safetensors"))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(rng, tmp / "rng.pt")
        files = {name: sha256_file(tmp / name) for name in ("model.safetensors", "optimizer.pt", "rng.pt")}
        full_meta = {
            **meta,
            "format": FORMAT_VERSION,
            "step": step,
            "component_keys": sorted(component_keys),
            "files": files,
        }
        # meta.json hashes its own fields too: a flipped bit in the step or loader state is caught on read.
        full_meta[META_DIGEST] = _meta_digest(full_meta)
        atomic_write_text(tmp / "meta.json", json.dumps(full_meta, indent=2, sort_keys=True))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except (OSError, SpeedrunError) as exc:
        # Disk full (or similar) mid-write: drop the partial copy; the previous checkpoint and
        # ``latest`` were not touched, so the run resumes from there.
        shutil.rmtree(tmp, ignore_errors=True)
        cause = exc.__cause__ if isinstance(exc, SpeedrunError) else exc  # fileio wraps the OSError
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
        raise SpeedrunError(
            f"{final}: cannot write this checkpoint ({reason}); the partial copy was removed. Fix that (e.g. free "
            f"disk space), then {resume_advice(root, rerun)}"
        ) from exc
    atomic_write_text(root / "latest", final.name + "\n", again=rerun)
    return final


def rerun_advice(seed: int, resume: bool) -> str:
    """How to run seed ``seed`` again so that it resumes from its checkpoints, for error messages."""
    if resume:
        return "run the same command again"
    # The same command would delete the checkpoints; and other seeds of a --seeds run must still start over.
    return f"run seed {seed} again without --no-resume (--seed {seed})"


def resume_advice(root: Path, rerun: str) -> str:
    """How to go on after an error, for its message: ``rerun`` (``rerun_advice``) resumes from the
    checkpoint in ``root`` a run would resume from now; with none, the run starts over."""
    try:
        path = latest_checkpoint(root)
    except SpeedrunError as exc:  # a damaged ``latest``: the run would stop on it too
        return f"{rerun} once this is mended: {exc}"
    except OSError as exc:  # this is a message about another error: it must not raise one of its own
        return f"{rerun} once {exc.filename or root} can be read ({exc.strerror or exc})"
    if path is None:
        return "run the same command again (no checkpoint yet: it starts over)"
    return f"{rerun} to resume from the last good checkpoint {path}"


def _meta_digest(meta: dict[str, Any]) -> str:
    """sha256 of the fields nothing else checks (step, loader and RNG bookkeeping, prediction kind...).

    ``files`` is checked against the files it hashes and ``component_keys`` against the weights
    (strict loading), so tools that re-save the weights and update those two stay valid.
    """
    body = {k: v for k, v in meta.items() if k not in (META_DIGEST, "files", "component_keys")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_meta(path: Path, verify: bool = True) -> dict[str, Any]:
    """Read ``meta.json`` of a checkpoint directory; with ``verify``, re-hash every file it lists."""
    meta_path = path / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise SpeedrunError(f"{path}: not a checkpoint (no meta.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpeedrunError(
            f"{meta_path}: corrupted ({exc}); delete {path} to resume from an earlier checkpoint"
        ) from None
    except OSError as exc:  # a folder of that name, or no permission to read it
        raise SpeedrunError(
            f"{meta_path}: cannot read it ({exc.strerror or exc}); fix that, or delete {path} to resume from an "
            "earlier checkpoint"
        ) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        raise SpeedrunError(
            f"{meta_path}: corrupted (no file list); delete {path} to resume from an earlier checkpoint"
        )
    if META_DIGEST in meta and meta[META_DIGEST] != _meta_digest(meta):
        raise SpeedrunError(
            f"{meta_path}: corrupted (its content does not match its sha256); delete {path} to resume "
            "from an earlier checkpoint"
        )
    if verify:
        for name, digest in meta["files"].items():
            f = path / name
            if not f.is_file() or sha256_file(f) != digest:
                raise SpeedrunError(
                    f"{f}: missing or corrupted (sha256 mismatch); delete {path} to resume from an earlier checkpoint"
                )
    return meta


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint to resume from: the one ``latest`` points to, or None when there is none yet.

    Without a usable pointer (a process killed between renaming a checkpoint into place and
    updating ``latest``, or a corrupted checkpoint deleted as its error message advises) the newest
    ``step-*`` directory is used: only complete checkpoints are ever renamed to that name, and each
    is re-hashed when read.
    """
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
    """Delete every checkpoint under ``root``, for a seed started over: should it die before its
    first checkpoint, the next plain run must start over too, not resume the abandoned run."""
    if not os.path.lexists(root):
        return
    try:
        shutil.rmtree(root)
    except OSError as exc:
        raise SpeedrunError(
            f"{exc.filename or root}: cannot delete the old checkpoints to start the seed over "
            f"({exc.strerror or exc}); delete {root} yourself, then run the same command again"
        ) from None


def load_training_state(path: Path, device: torch.device) -> tuple[dict[str, torch.Tensor], dict, dict, dict]:
    """(tensors, optimizer state, rng state, meta) of a verified checkpoint."""
    meta = read_meta(path)
    tensors = load_file(str(path / "model.safetensors"), device=str(device))
    optim_state = torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
    # weights_only: a checkpoint directory copied from elsewhere cannot run code when resumed.
    rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
    return tensors, optim_state, rng, meta


def split_component_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict, dict[str, dict]]:
    """Separate denoiser weights from ``components.<name>.*`` head weights."""
    model_sd: dict[str, torch.Tensor] = {}
    heads: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(COMPONENT_PREFIX):
            name, _, rest = key[len(COMPONENT_PREFIX) :].partition(".")
            heads.setdefault(name, {})[rest] = value
        else:
            model_sd[key] = value
    return model_sd, heads


def load_denoiser_strict(path: Path, model: nn.Module) -> dict[str, Any]:
    """Load only the denoiser weights of checkpoint ``path`` into ``model`` with strict keys.

    Keys the checkpoint declares as component-owned are dropped; any other unexpected or missing
    key is an error naming it. Returns the checkpoint's meta.
    """
    meta = read_meta(path)
    tensors = load_file(str(path / "model.safetensors"))
    declared = set(meta.get("component_keys", []))
    undeclared = sorted(k for k in tensors if k.startswith(COMPONENT_PREFIX) and k not in declared)
    if undeclared:
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
    bad_shapes = [k for k in expected if expected[k].shape != weights[k].shape]
    if bad_shapes:
        raise SpeedrunError(f"{path}: weights with the wrong shape for the track's architecture: {bad_shapes[:5]}")
    model.load_state_dict(weights, strict=True)
    return meta
