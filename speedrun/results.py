"""The results file of one run: ``submissions/<name>/results/<track>/<run-id>.json``.

Every field is documented in the schema (``speedrun schema`` writes ``results.schema.json``). The
``digest`` is the sha256 of the canonical JSON of every other field, so any edit is detected; the
provenance hashes tie the numbers to the exact files that produced them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from speedrun.errors import SpeedrunError, format_validation_error
from speedrun.fileio import atomic_write_text, sha256_file
from speedrun.tracks import REPO_ROOT, canonical_hash

SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Failure(_Model):
    step: int | None = Field(description="Step at which the run stopped (diverged or failed).")
    reason: str = Field(description="Why it stopped, in words.")
    last_finite_loss: float | None = Field(None, description="Last finite training loss before divergence.")


class EvalPoint(_Model):
    step: int = Field(description="Training step of the evaluated checkpoint.")
    metrics: dict[str, float | None] = Field(description="Metric name -> value (None: unavailable).")
    unavailable: dict[str, str] = Field(default_factory=dict, description="Metric -> why it is unavailable.")
    samples: int = Field(description="Generated samples the metrics used.")


class Timing(_Model):
    train_clock_s: float = Field(
        description="Harness clock: timed training incl. data loading, excl. eval/ckpt; the slowest rank's."
    )
    warmup_s: float = Field(description="Untimed warmup/compile steps (then undone).")
    data_s: float = Field(description="Part of the clock spent waiting for batches.")
    checkpoint_s: float = Field(
        description="Checkpoint writing (clock paused); a resumed run's lacks the writing of the one resumed from."
    )
    validation_s: float = Field(description="Validation-loss passes (clock paused).")
    eval_s: float = Field(description="Separate-process evaluation (sampling + metrics).")
    wall_s: float = Field(description="Whole run, start to results file.")
    gpu_hours: float = Field(description="train_clock_s x devices / 3600.")


class Speed(_Model):
    batches_per_second: float | None = Field(description="Median over steady-state windows of the clock.")
    images_per_second: float | None = Field(description="batches_per_second x global batch.")
    flops_per_step: int = Field(description="Model FLOPs of one training step (3 x forward matmul FLOPs).")
    mfu: float | None = Field(description="flops_per_step x batches/s / (peak FLOP/s x devices); None on CPU.")
    peak_memory_bytes: int | None = Field(description="Peak CUDA memory allocated on rank 0.")


class Hardware(_Model):
    device_type: str
    device_names: list[str] = Field(min_length=1, description="Each device's name; the CPU's for a CPU run.")
    device_count: int
    driver: str | None
    cpu: str = Field(description="CPU model name and architecture, from /proc/cpuinfo on Linux.")
    cpu_count: int = Field(description="CPU cores this process may run on (its affinity set).")


class Software(_Model):
    python: str
    torch: str
    triton: str | None
    cuda: str | None
    packages_sha256: str = Field(description="sha256 of the sorted installed 'name==version' list.")


class Provenance(_Model):
    manifest_sha256: str = Field(description="sha256 of submission.toml.")
    submission_files: dict[str, str] = Field(description="Every file of the submission folder (results excluded).")
    harness_sha256: str = Field(description="sha256 over the speedrun/ source tree.")
    track_hash: str = Field(description="Track.content_hash of the base track.")
    overrides: dict[str, Any] = Field(description="Manifest overrides applied to the track.")
    dataset_manifest_sha256: str | None = Field(description="sha256 of the prepared data manifest.")
    reference_stats_sha256: dict[str, str] = Field(
        default_factory=dict, description="Metric -> reference statistics hash."
    )
    extractor_weights: dict[str, str] = Field(default_factory=dict, description="Extractor id -> weights sha256.")

    @property
    def code(self) -> dict[str, Any]:
        """The run's code record (see ``code_record``), to compare with the code now."""
        return {"harness_sha256": self.harness_sha256, "submission_files": self.submission_files}


class RunResult(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    run_id: str = Field(description="'seed<N>' : one results file per seed.")
    submission: str
    track: str
    track_version: int
    seed: int
    status: Literal["ok", "diverged", "failed"]
    failure: Failure | None = None
    steps: int = Field(description="Optimizer steps completed.")
    metrics: dict[str, float | None] = Field(description="Final evaluation's metrics.")
    unavailable: dict[str, str] = Field(default_factory=dict, description="Metric -> why it is unavailable.")
    evals: list[EvalPoint] = Field(description="Every evaluation, in step order.")
    val_loss_curve: list[dict[str, float]] = Field(description="[{step, val_loss}] from the trainer.")
    speed: Speed
    timing: Timing
    kernels: str = Field(description="Attention/RoPE dispatch used: torch or triton.")
    world_size: int
    hardware: Hardware
    software: Software
    provenance: Provenance
    created_at: str
    digest: str = Field(description="sha256 of the canonical JSON of every other field.")


def compute_digest(data: dict[str, Any]) -> str:
    return canonical_hash({k: v for k, v in data.items() if k != "digest"})


def finalize(data: dict[str, Any]) -> RunResult:
    """Validate ``data`` (without digest) and seal it with its digest."""
    data = {**data, "digest": ""}
    RunResult.model_validate(data)  # fail before hashing
    as_json = json.loads(RunResult.model_validate(data).model_dump_json())
    as_json["digest"] = compute_digest(as_json)
    return RunResult.model_validate(as_json)


def write_result(path: Path, result: RunResult) -> Path:
    atomic_write_text(path, result.model_dump_json(indent=2) + "\n")
    return path


def load_result(path: Path, check_digest: bool = True) -> RunResult:
    """Parse and validate a results file; a digest mismatch means it was edited.

    Errors say what is wrong only: the remedy depends on the caller (``speedrun run`` and
    ``speedrun verify`` each add their own).
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpeedrunError(f"{path}: no such results file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpeedrunError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:  # a folder of that name, or no permission to read it
        raise SpeedrunError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        result = RunResult.model_validate(data)
    except ValidationError as exc:
        raise SpeedrunError(format_validation_error(str(path), exc)) from None
    if check_digest and compute_digest(data) != result.digest:
        raise SpeedrunError(f"{path}: field 'digest' does not match the content: the file was edited after the run")
    return result


def identity_problems(path: Path, folder: Path, r: RunResult) -> list[tuple[str, str]]:
    """(field, message) for each of submission, track and seed that ``r`` names differently from its
    path ``<folder>/results/<track>/seed<N>.json``; empty when the file lies where its content says."""
    problems = []
    if r.submission != folder.resolve().name:
        problems.append(
            ("submission", f"is '{r.submission}' but the file lies in submission folder '{folder.resolve().name}'")
        )
    if r.track != path.parent.name:
        problems.append(("track", f"is '{r.track}' but the file lies in results/{path.parent.name}/"))
    if r.run_id != path.stem or r.run_id != f"seed{r.seed}":
        problems.append(
            ("run_id", f"is '{r.run_id}' (seed {r.seed}); the file must be results/{r.track}/seed{r.seed}.json")
        )
    return problems


def missing_seeds(present: set[int]) -> list[int]:
    """The seeds below the highest of ``present`` that it lacks: an entry's seeds run 0, 1, 2, ...
    without a gap, so that it cannot keep only its best runs."""
    return sorted(set(range(max(present, default=-1) + 1)) - present)


# ------------------------------------------------------------------ provenance helpers
def tree_sha256(root: Path, pattern: str = "**/*.py") -> str:
    """sha256 over (relative path, file sha256) of every matching file, sorted."""
    h = hashlib.sha256()
    for p in sorted(root.glob(pattern)):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(f"{p.relative_to(root).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def harness_sha256() -> str:
    return tree_sha256(REPO_ROOT / "speedrun")


# What editors and file browsers leave beside the code; nothing a run reads, so hashing it would only
# make results "stale" when a swap file comes or goes.
_CACHE_FOLDERS = frozenset({"__pycache__", ".ipynb_checkpoints", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
_JUNK_FILES = (".DS_Store", "._*", "Thumbs.db", "desktop.ini", ".*.sw?", "*~", ".#*", "#*#")


def _left_out(rel: Path) -> bool:
    """Whether ``rel`` (relative to a submission folder) is left out of its provenance: results,
    caches and editor or file-browser litter (``.DS_Store``, ``.components.py.swp``, ``notes.txt~``)."""
    if rel.parts[0] == "results" or not _CACHE_FOLDERS.isdisjoint(rel.parts):
        return True
    return any(fnmatch.fnmatchcase(rel.name, pattern) for pattern in _JUNK_FILES)


def submission_file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file in the submission folder except its results, caches and editor litter."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not _left_out(rel):
            out[rel.as_posix()] = sha256_file(p)
    return out


def code_record(submission_folder: Path, harness: str | None = None) -> dict[str, Any]:
    """The code that trains a submission: the harness tree's hash and every submission file's.

    ``harness`` is the harness hash when the caller already has it (verify hashes speedrun/ once for
    every submission it checks).
    """
    return {
        "harness_sha256": harness or harness_sha256(),
        "submission_files": submission_file_hashes(submission_folder),
    }


class CodeChange(NamedTuple):
    """One difference between two code records; ``str()`` says it in words ("components.py changed")."""

    file: str | None  # a submission file's path; None for the harness source tree
    how: Literal["changed", "added", "removed"]

    def __str__(self) -> str:
        return f"{self.file or 'the harness source tree speedrun/'} {self.how}"


def code_changes(recorded: dict[str, Any], now: dict[str, Any]) -> list[CodeChange]:
    """What differs from the code record ``recorded`` in the current one ``now``; empty when none.

    Both are ``code_record`` dicts; checkpoints, results files (``Provenance.code``) and the code on
    disk are compared this way. Submission files come first (changed, then added, then removed, each
    sorted by path), then the harness. A record missing a key counts as empty there. Each change
    stays structured so verify can file it under its own field; the other callers join the ``str()``s.
    """
    then, files = recorded.get("submission_files", {}), now.get("submission_files", {})
    out = [CodeChange(f, "changed") for f in sorted(then.keys() & files.keys()) if then[f] != files[f]]
    out += [CodeChange(f, "added") for f in sorted(files.keys() - then.keys())]
    out += [CodeChange(f, "removed") for f in sorted(then.keys() - files.keys())]
    if recorded.get("harness_sha256") != now.get("harness_sha256"):
        out.append(CodeChange(None, "changed"))
    return out


def hardware_info(device: torch.device, world_size: int, per_node: int) -> Hardware:
    """What ran: ``world_size`` processes in all, ``per_node`` of them on this node."""
    names, driver = [], None
    if device.type == "cuda":
        # The cards this node's processes use (local ranks 0..n-1), not every card the machine shows.
        used = min(torch.cuda.device_count(), per_node)
        names = [torch.cuda.get_device_name(i) for i in range(used)]
        try:
            import subprocess

            driver = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10,
            ).stdout.strip().splitlines()[0]
        except Exception:  # nvidia-smi is optional; the device names still identify the card
            driver = None
    cpu = cpu_model()
    return Hardware(
        device_type=device.type,
        device_names=names or [cpu],
        device_count=world_size,
        driver=driver,
        cpu=cpu,
        cpu_count=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
    )


def cpu_model() -> str:
    """The CPU's marketing name ("AMD EPYC 7R13 Processor") and architecture, e.g. for CPU batches/s.

    ``platform.processor()`` is empty or just the architecture on Linux; /proc/cpuinfo names the part.
    """
    arch = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return f"{value.strip()} ({arch})"
    except OSError:  # not Linux: fall through to what the platform module knows
        pass
    return platform.processor() or arch


def software_info() -> Software:
    pkgs = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return Software(
        python=sys.version.split()[0],
        torch=torch.__version__,
        triton=triton_version,
        cuda=torch.version.cuda,
        packages_sha256=hashlib.sha256("\n".join(pkgs).encode()).hexdigest(),
    )


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
