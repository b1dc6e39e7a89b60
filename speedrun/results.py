"""What the stages of a run hand each other, as typed models, ending in the results file of one run,
``submissions/<name>/results/<track>/<run-id>.json``, sealed by its ``digest`` against any edit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from speedrun.errors import SpeedrunError, format_validation_error
from speedrun.fileio import atomic_write_text
from speedrun.tracks import canonical_hash

SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainSummary(_Model):
    """How one seed's training ended, from the trainer (``train_summary.json``) to the launcher."""

    status: Literal["ok", "diverged", "interrupted"]
    steps: int
    final_loss: float | None
    last_finite_loss: float | None
    diverged_at: int | None
    reason: str | None
    clock_seconds: float
    warmup_seconds: float
    checkpoint_seconds: float
    validation_seconds: float
    data_seconds: float
    batches_per_second: float | None
    images_per_second: float | None
    flops_per_step: int
    mfu: float | None
    peak_memory_bytes: int | None
    kernels: str
    world_size: int
    eval_checkpoints: list[str] = []
    val_loss_curve: list[dict[str, float]] = []
    teachers: dict[str, str] = {}
    code: dict[str, Any] = Field(default_factory=dict, description="The code_record hashed before training.")


class EvalReport(_Model):
    """What ``speedrun eval`` measured of one checkpoint (``<run>/eval/step-N.json``)."""

    step: int
    track: str
    track_hash: str
    checkpoint: str
    model_sha256: str
    prediction: str
    protocol_hash: str
    harness_sha256: str = Field(description="The code that scored it: a report is reused only from the same.")
    samples: int
    metrics: dict[str, float | None] = {}
    unavailable: dict[str, str] = {}
    reference_stats_sha256: dict[str, str] = {}
    extractor_weights: dict[str, str] = {}
    seconds: dict[str, float] = {}
    details: dict[str, Any] = {}
    grid: str | None = None


class CheckpointTimes(BaseModel):
    """The run's accounting up to a checkpoint, restored on resume; mutable, the trainer adds to it."""

    model_config = ConfigDict(extra="forbid")

    step_seconds: list[float] = []
    checkpoint_seconds: float = 0.0
    validation_seconds: float = 0.0
    data_seconds: float = 0.0
    last_finite_loss: float | None = None
    flops_per_step: int | None = None
    budget_spent: bool = Field(False, description="The checkpoint's step spent train.max_seconds.")


class CheckpointMeta(BaseModel):
    """``meta.json`` of a checkpoint: what wrote it (track, code, processes), where the run stands, and
    the sha256 of every other file. Mutable: the trainer keeps one as the run's record and writes it
    at each checkpoint (``checkpoint.write_checkpoint`` fills ``files`` and the digest)."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, serialize_by_alias=True)

    format: int = 1
    step: int = 0
    track: str
    track_hash: str
    code: dict[str, Any] = {}
    denoiser: str = Field(alias="model_config", description="The track's model config name.")
    text_dim: int
    prediction: Literal["velocity", "x0"] = "velocity"
    seed: int
    world_size: int
    clock_seconds: float = 0.0
    warmup_seconds: float = 0.0
    loader: dict[str, Any] = {}
    val_loss_curve: list[dict[str, float]] = []
    eval_checkpoints: list[str] = []
    times: CheckpointTimes = Field(default_factory=CheckpointTimes)
    log_bytes: int | None = Field(None, description="Size of train.jsonl at the checkpoint: a resume cuts it there.")
    component_keys: list[str] = []
    files: dict[str, str] = {}
    meta_sha256: str | None = None


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
    train_clock_s: float = Field(description="Timed training incl. data loading, excl. eval/ckpt; slowest rank's.")
    warmup_s: float = Field(description="Untimed warmup/compile steps (then undone).")
    data_s: float = Field(description="Part of the clock spent waiting for batches.")
    checkpoint_s: float = Field(description="Checkpoint writing (clock paused).")
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
    harness_sha256: str = Field(description="sha256 of the harness code that trains and evaluates (speedrun/).")
    track_hash: str = Field(description="Track.content_hash of the base track.")
    overrides: dict[str, Any] = Field(description="Manifest overrides applied to the track.")
    dataset_manifest_sha256: str | None = Field(description="sha256 of the prepared data manifest.")
    reference_stats_sha256: dict[str, str] = Field(default_factory=dict, description="Metric -> reference stats hash.")
    extractor_weights: dict[str, str] = Field(default_factory=dict, description="Extractor id -> weights sha256.")
    teachers: dict[str, str] = Field(
        default_factory=dict, description="Frozen component module (teacher) -> its id, which names its weights."
    )

    @property
    def code(self) -> dict[str, Any]:
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
    as_json = json.loads(RunResult.model_validate({**data, "digest": ""}).model_dump_json())
    as_json["digest"] = compute_digest(as_json)
    return RunResult.model_validate(as_json)


def write_result(path: Path, result: RunResult) -> None:
    atomic_write_text(path, result.model_dump_json(indent=2) + "\n")


def load_result(path: Path, check_digest: bool = True) -> RunResult:
    """Parse and validate a results file; errors say what is wrong only, callers add their remedy."""
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
    """(field, message) for each of submission, track and seed that ``r`` names differently from its path."""
    problems, name = [], folder.resolve().name
    if r.submission != name:
        problems.append(("submission", f"is '{r.submission}' but the file lies in submission folder '{name}'"))
    if r.track != path.parent.name:
        problems.append(("track", f"is '{r.track}' but the file lies in results/{path.parent.name}/"))
    if r.run_id != path.stem or r.run_id != f"seed{r.seed}":
        problems.append(
            ("run_id", f"is '{r.run_id}' (seed {r.seed}); the file must be results/{r.track}/seed{r.seed}.json")
        )
    return problems


def missing_seeds(present: set[int]) -> list[int]:
    """The seeds below the highest of ``present`` that it lacks (an entry may not keep only its best runs)."""
    return sorted(set(range(max(present, default=-1) + 1)) - present)
