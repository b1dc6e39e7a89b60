"""What the stages of a run hand each other, as typed models, ending in the results file of one run,
``submissions/<name>/results/<track>/<run-id>.json``, sealed by its ``digest`` against any edit."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from speedrun.errors import SpeedrunError, format_validation_error
from speedrun.fileio import atomic_write_text
from speedrun.metrics import METRICS
from speedrun.tracks import canonical_hash

# A results file is a few kB: the cap keeps a planted huge file out of memory.
MAX_RESULT_BYTES = 1 << 20


class _Model(BaseModel):
    # json reads NaN and Infinity, which no recorded measurement is: every number is finite.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _within_bounds(values: dict[str, float | None]) -> dict[str, float | None]:
    for name, value in values.items():
        lower = METRICS[name].lower if name in METRICS else None
        if value is not None and lower is not None and value < lower:
            raise ValueError(f"'{name}' is {value}, below the least value the metric takes ({lower})")
    return values


# Metric name -> value (None: unavailable), each at or above its registry's lower bound.
MetricValues = Annotated[dict[str, float | None], AfterValidator(_within_bounds)]
NonNegative = Annotated[float, Field(ge=0)]


class CurvePoint(_Model):
    """One validation: the plain flow-matching mean squared error after ``step`` optimizer steps."""

    step: int = Field(ge=0)
    val_loss: NonNegative


class TrainSummary(_Model):
    """How one seed's training ended, from the trainer (``train_summary.json``) to the launcher."""

    model_config = ConfigDict(allow_inf_nan=True)  # a diverged run's final_loss is NaN or infinite

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
    val_loss_curve: list[CurvePoint] = []
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
    metrics: MetricValues = {}
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
    val_loss_curve: list[CurvePoint] = []
    eval_checkpoints: list[str] = []
    times: CheckpointTimes = Field(default_factory=CheckpointTimes)
    log_bytes: int | None = Field(None, description="Size of train.jsonl at the checkpoint: a resume cuts it there.")
    component_keys: list[str] = []
    files: dict[str, str] = {}
    meta_sha256: str | None = None


class Failure(_Model):
    step: int | None = Field(ge=0, description="Step at which the run stopped (diverged or failed).")
    reason: str = Field(description="Why it stopped, in words.")
    # Any sign: a submission's objective may subtract terms (contrastive-fm does).
    last_finite_loss: float | None = Field(None, description="Last finite training loss before divergence.")


class EvalPoint(_Model):
    step: int = Field(ge=0, description="Training step of the evaluated checkpoint.")
    metrics: MetricValues = Field(description="Metric name -> value (None: unavailable).")
    unavailable: dict[str, str] = Field(default_factory=dict, description="Metric -> why it is unavailable.")
    samples: int = Field(ge=1, description="Generated samples the metrics used.")


class Timing(_Model):
    train_clock_s: NonNegative = Field(description="Timed training incl. data loading, excl. eval/ckpt (slowest rank).")
    warmup_s: NonNegative = Field(description="Untimed warmup/compile steps (then undone).")
    data_s: NonNegative = Field(description="Part of the clock spent waiting for batches.")
    checkpoint_s: NonNegative = Field(description="Checkpoint writing (clock paused).")
    validation_s: NonNegative = Field(description="Validation-loss passes (clock paused).")
    eval_s: NonNegative = Field(description="Separate-process evaluation (sampling + metrics).")
    wall_s: NonNegative = Field(description="Whole run, start to results file.")
    gpu_hours: NonNegative = Field(description="train_clock_s x devices / 3600.")


class Speed(_Model):
    batches_per_second: float | None = Field(gt=0, description="Median over steady-state windows of the clock.")
    images_per_second: float | None = Field(gt=0, description="batches_per_second x global batch.")
    flops_per_step: int = Field(ge=0, description="Model FLOPs of one training step (3 x forward matmul FLOPs).")
    mfu: float | None = Field(ge=0, description="flops_per_step x batches/s / (peak FLOP/s x devices); None on CPU.")
    peak_memory_bytes: int | None = Field(ge=0, description="Peak CUDA memory allocated on rank 0.")


class Hardware(_Model):
    device_type: str
    device_names: list[str] = Field(min_length=1, description="Each device's name; the CPU's for a CPU run.")
    device_count: int = Field(ge=1)
    driver: str | None
    cpu: str = Field(description="CPU model name and architecture, from /proc/cpuinfo on Linux.")
    cpu_count: int = Field(ge=1, description="CPU cores this process may run on (its affinity set).")


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
    schema_version: Literal[1] = 1
    run_id: str = Field(description="'seed<N>' : one results file per seed.")
    submission: str
    track: str
    track_version: int = Field(ge=1)
    seed: int = Field(ge=0)
    status: Literal["ok", "diverged", "failed"]
    failure: Failure | None = None
    steps: int = Field(ge=0, description="Optimizer steps completed.")
    metrics: MetricValues = Field(description="Final evaluation's metrics.")
    unavailable: dict[str, str] = Field(default_factory=dict, description="Metric -> why it is unavailable.")
    evals: list[EvalPoint] = Field(description="Every evaluation, in step order.")
    # The validation loss is the plain flow-matching mean squared error, whatever the submission trains on.
    val_loss_curve: list[CurvePoint] = Field(description="Every validation, from the trainer.")
    speed: Speed
    timing: Timing
    kernels: str = Field(description="Attention/RoPE dispatch used: torch or triton.")
    world_size: int = Field(ge=1)
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


def load_result(path: Path) -> RunResult:
    """The results file ``path``, as every reader takes it: a regular file (a symbolic link is refused before
    it is opened) of at most ``MAX_RESULT_BYTES``, then schema and digest. Errors say what is wrong only,
    callers add their remedy."""
    try:
        st = os.lstat(path)  # the name itself, never what a link points to
        if stat.S_ISLNK(st.st_mode):
            raise SpeedrunError(f"{path}: a symbolic link, not a results file (results are never read through links)")
        if not stat.S_ISREG(st.st_mode):
            raise SpeedrunError(f"{path}: not a regular file")
        if st.st_size > MAX_RESULT_BYTES:
            raise SpeedrunError(f"{path}: {st.st_size} bytes, more than a results file's limit of {MAX_RESULT_BYTES}")
        data = json.loads(path.read_text())
        result = RunResult.model_validate(data)
        digest = compute_digest(data)
    except FileNotFoundError:
        raise SpeedrunError(f"{path}: no such results file") from None
    except OSError as exc:  # no permission to read it
        raise SpeedrunError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except RecursionError:  # json recurses once per nesting level: the interpreter's limit is the depth cap
        raise SpeedrunError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValidationError as exc:
        raise SpeedrunError(format_validation_error(str(path), exc)) from None
    except ValueError as exc:  # a JSON syntax error, bytes that are not UTF-8, an integer of over 4300 digits
        raise SpeedrunError(f"{path}: not valid JSON ({exc})") from None
    if digest != result.digest:
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
