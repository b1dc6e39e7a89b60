"""``speedrun run`` and ``speedrun reproduce``: check the options, prepare, then train each seed, evaluate it in a
separate process and write its result, with its run folder locked."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from speedrun import advice, results
from speedrun.checkpoint import discard_checkpoints, read_meta
from speedrun.devices import DEVICES, MAX_SEED, PARALLEL_MODES, ParallelMode
from speedrun.errors import SpeedrunError, TrainingInterrupted
from speedrun.fileio import atomic_write_bytes
from speedrun.locks import results_lock, seed_lock
from speedrun.paths import data_root, runs_root, unusable_part
from speedrun.provenance import code_changes, code_record, hardware_info, harness_sha256, now_iso, software_info
from speedrun.results import EvalReport, RunResult, TrainSummary, load_result, write_result
from speedrun.submission import MANIFEST, Submission, load_submission
from speedrun.tracks import REPO_ROOT, Track, canonical_hash, load_track
from speedrun.trust import signature_path
from speedrun.verify import BASELINE, setup
from speedrun.worker import SUMMARY, cli_flags, train_seed


class RunOptions(BaseModel):
    """The options of ``speedrun run``, checked once here, for the CLI and Python callers alike: a bad
    value is a ``SpeedrunError`` naming its flag (``--seed -1: must be from 0 to ...``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    track: str | None = None
    seeds: int = Field(1, ge=1, le=MAX_SEED)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    nproc: int = Field(1, ge=1)
    nnodes: int = Field(1, ge=1)
    node_rank: int = Field(0, ge=0)
    master_addr: str = "127.0.0.1"
    master_port: int = Field(29500, ge=1, le=65535)
    device: Literal[DEVICES] | None = None  # type: ignore[valid-type]
    resume: bool = True
    force: bool = False
    data_dir: Path | None = None
    runs_dir: Path | None = None
    progress: bool = True
    parallel: ParallelMode = "auto"

    def __init__(self, **options: Any) -> None:
        try:
            super().__init__(**options)
        except ValidationError as exc:
            raise SpeedrunError("; ".join(map(_option_problem, exc.errors()))) from None
        if self.node_rank >= self.nnodes:
            raise SpeedrunError(f"--node-rank {self.node_rank}: must be from 0 to --nnodes - 1 ({self.nnodes - 1})")


def _option_problem(error: dict[str, Any]) -> str:
    """``--flag value: what it must be`` for one pydantic error of RunOptions."""
    name = str(error["loc"][0])
    field = RunOptions.model_fields[name]
    value = error.get("input")
    choices = {"device": DEVICES, "parallel": PARALLEL_MODES}.get(name)
    bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "le") if getattr(m, k, None) is not None}
    if "ge" in bounds and isinstance(value, int):
        rule = f"from {bounds['ge']} to {bounds['le']}" if "le" in bounds else f"{bounds['ge']} or more"
    elif choices:
        rule = f"one of {', '.join(choices)}"
    else:
        rule = error["msg"]
    return f"--{name.replace('_', '-')} {value!r}: must be {rule}"


def check_options(o: RunOptions, track: Track) -> None:
    """Refuse options that would fail on this machine or track, before anything is prepared or written."""
    if o.device == "cuda" and not torch.cuda.is_available():
        raise SpeedrunError("--device cuda: this machine has no usable CUDA device; use --device cpu")
    if (batch := track.train.global_batch) % (world := o.nproc * o.nnodes):
        raise SpeedrunError(f"--nproc {o.nproc} x --nnodes {o.nnodes} = {world} processes do not divide track "
                            f"'{track.id}''s global batch {batch} (train.global_batch): use one that divides it")
    # As paths.py resolves them ($SPEEDRUN_*_DIR too); a prepared data folder may be read-only.
    for option, env, explicit, root, write in (
        ("--data-dir", "$SPEEDRUN_DATA_DIR", o.data_dir, data_root(o.data_dir), False),
        ("--runs-dir", "$SPEEDRUN_RUNS_DIR", o.runs_dir, runs_root(o.runs_dir), True),
    ):
        if (problem := unusable_part(root, write=write)) is not None:
            raise SpeedrunError(f"{option if explicit is not None else env} {root}: {problem}")


def _child_env(**extra: str) -> dict[str, str]:
    """The environment of the torchrun and evaluation processes: they import this very harness, not a
    stray ``speedrun/`` or ``torch.py`` in the current folder, which ``python -m`` would put first."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONSAFEPATH": "1", "PYTHONPATH": path, **extra}


def _train(
    submission: Submission, track: Track, seed: int, run_dir: Path, o: RunOptions, lock_fds: tuple[int, ...]
) -> TrainSummary | None:
    """Train the seed in this process or under torchrun; its summary (None on nodes other than 0)."""
    if o.nproc == 1 and o.nnodes == 1:
        return train_seed(
            submission, track, seed, run_dir, data_dir=o.data_dir, device=o.device, resume=o.resume, progress=o.progress
        )
    # Named here, not by the workers: a dynamic rendezvous numbers the nodes itself; nodes may share the run folder.
    stopped = run_dir / f"interrupted-node{o.node_rank}.json"
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        *cli_flags(nproc_per_node=o.nproc, nnodes=o.nnodes, node_rank=o.node_rank, master_addr=o.master_addr,
                   master_port=o.master_port),
        "-m", "speedrun.worker", str(submission.path),
        *cli_flags(track=track.ref, seed=seed, run_dir=run_dir, parallel=o.parallel, data_dir=o.data_dir,
                   device=o.device, no_resume=not o.resume, stop_message=stopped,
                   worker_lock=bool(lock_fds)),  # this launcher locked the seed: its workers lock too
    ]
    if not o.resume and o.node_rank == 0:
        # Here, not on rank 0: should that fail, the other ranks would wait for it at their first collective.
        discard_checkpoints(run_dir / "checkpoints")
    stopped.unlink(missing_ok=True)  # an earlier launch's
    returncode = _wait_for_torchrun(cmd, lock_fds)
    if returncode != 0:
        try:  # torchrun exits 1 whatever stopped its workers: the first one's stop message says what did
            stop = json.loads(stopped.read_text())
            interrupted = TrainingInterrupted(str(stop["message"]), int(stop["signum"]))
        except (OSError, ValueError, KeyError, TypeError):  # none, or not one this harness wrote
            raise SpeedrunError(
                f"training of seed {seed} failed under torchrun (exit {returncode}); see the log above"
            ) from None
        with suppress(OSError):  # the next launch removes it first, and says so if it cannot
            stopped.unlink()
        raise interrupted
    if o.node_rank != 0:
        return None
    return TrainSummary.model_validate_json((run_dir / SUMMARY).read_bytes())


def _read_eval(path: Path) -> EvalReport:
    try:
        return EvalReport.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise SpeedrunError(f"{path}: not a metrics file of `speedrun eval` ({str(exc).splitlines()[0]}); delete it "
                            "to evaluate that checkpoint again") from None


def _evaluation_identity(track: Track) -> dict[str, str]:
    """What a metrics file must record, besides its weights, to stand for an evaluation now: the track
    file and protocol, scored by this harness (a seed started over trains bit-identical weights on a CPU)."""
    from speedrun.eval.run import protocol

    return {"track_hash": load_track(track.ref).content_hash, "protocol_hash": canonical_hash(protocol(track)),
            "harness_sha256": harness_sha256()}


def _scored_here(report: EvalReport, checkpoint: Path, identity: dict[str, str]) -> bool:
    """Whether an earlier metrics file scored these very weights, with ``_evaluation_identity``."""
    weights = read_meta(checkpoint, verify=False).files.get("model.safetensors")
    return report.model_sha256 == weights and all(getattr(report, k) == v for k, v in identity.items())


# This machine's copy of the seed's result, in its run folder: the mark that the seed ran here.
LOCAL_RESULT = "result.json"


class Outcome(NamedTuple):
    """A seed's result to show (``path``) and how it came: "ran", "reproduced" (run here beside a committed
    result made elsewhere) or "finished" (run here before, shown as it is)."""

    path: Path
    how: str


def _read(path: Path) -> RunResult | None:
    try:
        return load_result(path)
    except SpeedrunError:
        return None


def _changes(result: RunResult, submission: Submission, track: Track) -> list[str]:
    """What differs between the code and track that made ``result`` and the current ones."""
    changed = [str(c) for c in code_changes(result.provenance.code, code_record(submission.path))]
    if result.provenance.track_hash != load_track(track.ref).content_hash:
        changed.append(f"track '{track.id}' changed")
    return changed


def _skip(
    submission: Submission, track: Track, seed: int, run_dir: Path, results_path: Path, o: RunOptions, console: Console
) -> Outcome | None:
    """The seed's outcome when it already ran here with the current code; None when it is to run. A seed
    whose result in the submission folder did not come from this machine runs here, to be compared with it."""
    if o.force or not results_path.exists():
        return None
    try:
        committed = load_result(results_path)
    except SpeedrunError as exc:
        raise SpeedrunError(f"{exc}. `--force` re-runs seed {seed}, replacing it") from None
    if changed := _changes(committed, submission, track):
        raise SpeedrunError(f"{results_path}: seed {seed} has a result from other code or track ({'; '.join(changed)})"
                            f"; `--force` re-runs seed {seed} with the current files, replacing it")
    local = _read(run_dir / LOCAL_RESULT)
    if local is None or _changes(local, submission, track):
        return None
    if local.digest == committed.digest:
        console.print(f"seed {seed}: already finished here ({results_path}), showing it; `--force` runs it again")
        return Outcome(results_path, "finished")
    console.print(f"seed {seed}: already reproduced here ({run_dir / LOCAL_RESULT}); `--force` runs it again")
    compare_with_committed(local, committed, results_path, track, console)
    return Outcome(run_dir / LOCAL_RESULT, "reproduced")


def run_one_seed(submission: Submission, track: Track, seed: int, o: RunOptions, console: Console) -> Outcome | None:
    results_path = submission.results_dir(track.id) / f"seed{seed}.json"
    run_dir = runs_root(o.runs_dir) / submission.name / track.id / f"seed{seed}"
    # Checked before locking so a finished seed is skipped without creating its run folder.
    if (outcome := _skip(submission, track, seed, run_dir, results_path, o, console)) is not None:
        return outcome
    if o.node_rank != 0:
        # Only node 0 locks, evaluates and records: on a shared filesystem the other nodes would find its locks held.
        console.print(f"[bold]seed {seed}[/]: training {submission.name} on {track.id} -> {run_dir}")
        _train(submission, track, seed, run_dir, o, ())
        return None
    with results_lock(results_path), seed_lock(run_dir) as lock_fd:
        if (outcome := _skip(submission, track, seed, run_dir, results_path, o, console)) is not None:  # done meanwhile
            return outcome
        previous = _read(results_path)
        # A current result made elsewhere stays as committed; this machine's goes to its run folder.
        reproduce = previous is not None and not o.force
        if reproduce:
            console.print(f"seed {seed}: reproducing the committed result ({results_path}) on this machine")
        target = run_dir / LOCAL_RESULT if reproduce else results_path
        _train_evaluate_record(submission, track, seed, run_dir, target, o, console, (lock_fd,))
        if not reproduce:
            atomic_write_bytes(run_dir / LOCAL_RESULT, target.read_bytes())
        if previous is not None:
            compare_with_committed(load_result(target), previous, results_path, track, console)
        return Outcome(target, "reproduced" if reproduce else "ran")


def _wait_for_torchrun(cmd: list[str], lock_fds: tuple[int, ...]) -> int:
    """Run torchrun to its end and return its exit status. A terminal's Ctrl-C reaches torchrun too, which
    stops its workers at a checkpoint: this launcher ignores it to wait for them and their stop message."""
    proc = subprocess.Popen(cmd, env=_child_env(), pass_fds=lock_fds)
    if threading.current_thread() is not threading.main_thread():
        return proc.wait()  # only the main thread may set signal handlers; signals reach it alone anyway
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)  # None: set outside Python


def _train_evaluate_record(
    submission: Submission, track: Track, seed: int, run_dir: Path, results_path: Path, o: RunOptions,
    console: Console, lock_fds: tuple[int, ...],
) -> None:
    """Node 0's part: train the seed, evaluate its checkpoints and write its result to ``results_path``."""
    wall0 = time.perf_counter()
    console.print(f"[bold]seed {seed}[/]: training {submission.name} on {track.id} -> {run_dir}")
    summary = _train(submission, track, seed, run_dir, o, lock_fds)
    with advice.once_trained(seed, o.resume):
        evals: list[EvalReport] = []
        eval_s = 0.0
        if summary.status == "ok":
            identity = _evaluation_identity(track)
            for name in summary.eval_checkpoints:
                ckpt = run_dir / "checkpoints" / name
                out = run_dir / "eval" / f"{name}.json"
                if out.exists() and _scored_here(report := _read_eval(out), ckpt, identity):
                    evals.append(report)
                    continue
                # In a separate process, so nothing of the training process (or its code) leaks in.
                console.print(f"seed {seed}: evaluating {name}")
                t0 = time.perf_counter()
                cmd = [sys.executable, "-m", "speedrun.cli", "eval", str(ckpt)]
                cmd += cli_flags(track=track.ref, out=out, device=o.device, data_dir=o.data_dir)
                code = subprocess.run(cmd, env=_child_env(PYTHONUNBUFFERED="1"), pass_fds=lock_fds).returncode
                if code != 0:
                    raise SpeedrunError(f"evaluation of {ckpt} failed (exit {code}); see the message above")
                evals.append(_read_eval(out))
                eval_s += time.perf_counter() - t0
        result = assemble_result(submission, track, seed, summary, evals, eval_s, time.perf_counter() - wall0, o)
        if changed := code_changes(summary.code, code_record(submission.path)):
            console.print(f"[yellow]seed {seed}: files changed while it ran ({'; '.join(map(str, changed))}); "
                          "`speedrun verify` will call its result (which names the code that trained) stale[/]")
        # A write killed midway leaves a hidden temporary file: not to be committed with the results.
        for name in (results_path.name, results_path.with_suffix(".png").name):
            for stale in results_path.parent.glob(f".{name}.tmp-*"):
                stale.unlink(missing_ok=True)
        if evals and evals[-1].grid and (grid := run_dir / "eval" / evals[-1].grid).is_file():
            # For the leaderboard page; written before the results file, which marks the seed finished.
            atomic_write_bytes(results_path.with_suffix(".png"), grid.read_bytes())
        # A signature of the result this one replaces would no longer hold: this one is unsigned until signed.
        signature_path(results_path).unlink(missing_ok=True)
        write_result(results_path, result)
        console.print(f"seed {seed}: {result.status}; results -> {results_path}")


def _device(o: RunOptions) -> torch.device:
    return torch.device(o.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def reproduce(folder: Path, track_ref: str, data_dir: Path | None, runs_dir: Path | None, console: Console) -> None:
    """``speedrun reproduce``: run the track's required seeds from step 0, replacing the entry's results files."""
    track = load_track(track_ref)
    o = RunOptions(track=track_ref, seeds=track.rules.seeds_required, force=True, data_dir=data_dir, runs_dir=runs_dir)
    _refuse_unpaired_reproduction(folder, track, o)
    run_submission(folder, o, console=console)
    console.print(f"reproduced {o.seeds} seed(s); to sign them: speedrun sign {folder} --track {track_ref}",
                  highlight=False, soft_wrap=True)


def _refuse_unpaired_reproduction(folder: Path, track: Track, o: RunOptions) -> None:
    """Refuse, before any seed runs, to reproduce an entry in another setup (machine model, torch build) than
    the one the baseline's results on ``track`` were made in: the leaderboard pairs seeds within one only."""
    baseline = folder.parent / BASELINE
    if folder.resolve() == baseline.resolve():
        return
    made_in = baseline / "results" / track.id
    made = {setup(r.hardware, r.software.torch) for p in sorted(made_in.glob("seed*.json")) if (r := _read(p))}
    here = setup(hardware_info(_device(o), o.nproc * o.nnodes, o.nproc), torch.__version__)
    if made and made != {here}:
        raise SpeedrunError(
            f"{made_in}: the baseline's results were made on {'; '.join(sorted(made))}, and this run would be made "
            f"on {here}: the leaderboard pairs an entry's seeds with the baseline's only on one machine model with one "
            "torch build, so these would never be ranked; reproduce the entry where the baseline's were made"
        )


def assemble_result(
    submission: Submission, track: Track, seed: int, summary: TrainSummary, evals: list[EvalReport], eval_s: float,
    wall_s: float, o: RunOptions,
) -> RunResult:
    from speedrun.data.source import dataset_manifest_sha256

    s = summary
    device = _device(o)
    final = evals[-1] if evals else None
    return results.finalize({
        "run_id": f"seed{seed}", "submission": submission.name, "track": track.id, "track_version": track.version,
        "seed": seed, "status": s.status,
        "failure": None if s.status == "ok" else results.Failure(
            step=s.diverged_at, reason=s.reason, last_finite_loss=s.last_finite_loss
        ),
        "steps": s.steps, "metrics": final.metrics if final else {}, "unavailable": final.unavailable if final else {},
        "evals": [results.EvalPoint(step=e.step, metrics=e.metrics, unavailable=e.unavailable, samples=e.samples)
                  for e in evals],
        "val_loss_curve": s.val_loss_curve,
        "speed": results.Speed(**s.model_dump(include=set(results.Speed.model_fields))),
        "timing": results.Timing(
            train_clock_s=s.clock_seconds, warmup_s=s.warmup_seconds, data_s=s.data_seconds,
            checkpoint_s=s.checkpoint_seconds, validation_s=s.validation_seconds, eval_s=eval_s, wall_s=wall_s,
            gpu_hours=s.clock_seconds * s.world_size / 3600 if device.type == "cuda" else 0.0,
        ),
        "kernels": s.kernels, "world_size": s.world_size, "hardware": hardware_info(device, s.world_size, o.nproc),
        "software": software_info(),
        "provenance": results.Provenance(
            manifest_sha256=s.code["submission_files"][MANIFEST], submission_files=s.code["submission_files"],
            harness_sha256=s.code["harness_sha256"], track_hash=load_track(track.ref).content_hash,
            overrides=submission.manifest.flat_overrides(),
            dataset_manifest_sha256=dataset_manifest_sha256(track, data_root(o.data_dir)),
            reference_stats_sha256={k: v for e in evals for k, v in e.reference_stats_sha256.items()},
            extractor_weights={k: v for e in evals for k, v in e.extractor_weights.items()},
            teachers=s.teachers,
        ),
        "created_at": now_iso(),
    })


def run_submission(path: Path, o: RunOptions, console: Console) -> list[Path]:
    from speedrun.data.prepare import prepare

    submission = load_submission(path)
    track = submission.track(o.track)
    check_options(o, track)
    if o.force:  # a re-run from step 0: resuming a finished seed's last checkpoint would train nothing
        o = o.model_copy(update={"resume": False})
    if o.node_rank == 0:
        prepare(track, data_root(o.data_dir))
    seeds = [o.seed] if o.seed is not None else list(range(o.seeds))
    outcomes = [out for s in seeds if (out := run_one_seed(submission, track, s, o, console)) is not None]
    if outcomes:
        print_summary(submission.name, track.id, outcomes, console)
    return [out.path for out in outcomes]


def compare_with_committed(new: RunResult, old: RunResult, old_path: Path, track: Track, console: Console) -> None:
    """The seed's scores beside the committed ones, and what agreement to expect: bit for bit from a CPU
    of the committed result's model, about a change of seed from another machine."""
    table = Table(title=f"seed {new.seed}: this run vs the committed {old_path}", title_justify="left")
    for col in ("metric", "this run", "committed", "difference"):
        table.add_column(col, overflow="fold")
    for name in sorted(set(new.metrics) | set(old.metrics)):
        a, b = new.metrics.get(name), old.metrics.get(name)
        if a is None or b is None:
            diff = "-"
        else:
            diff = "identical" if a == b else f"{a - b:+.4g}" + (f" ({(a - b) / abs(b):+.1%})" if b else "")
        table.add_row(name, _number(a), _number(b), diff)
    console.print(table)
    made, committed = setup(new.hardware, new.software.torch), setup(old.hardware, old.software.torch)
    if new.metrics == old.metrics:
        console.print(f"seed {new.seed}: [green]identical to the committed result[/]")
    elif made == committed and new.hardware.device_type == "cpu":
        console.print(Text.assemble(
            (f"seed {new.seed}: differs from the committed result, made in this setup ({made})", "red"),
            ": a CPU seed reproduces bit for bit in one setup, so the code, other packages or data differ; report it "
            "with both results files",
        ))  # fmt: skip
    else:
        ranked = track.ranking.metric
        found = [_read(f) for f in sorted(old_path.parent.glob("seed*.json"))]
        values = [r.metrics[ranked] for r in found if r and r.status == "ok" and r.metrics.get(ranked) is not None]
        spread = f" (the committed seeds' {ranked} has sd {statistics.stdev(values):.4g})" if len(values) > 1 else ""
        console.print(Text(f"seed {new.seed}: made on {made}, the committed one on {committed}: across setups (machine "
                           f"model, torch build) a seed's scores move about as much as a change of seed{spread}"))


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def print_summary(submission: str, track: str, outcomes: list[Outcome], console: Console) -> None:
    """One row per seed; narrow terminals fold the metrics cell rather than cut the seed or its scores."""
    table = Table(title=f"Results: {submission} on {track}", title_justify="left")
    table.add_column("seed", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("metrics", overflow="fold", ratio=1)
    for col in ("batch/s", "train", "eval", "result"):
        table.add_column(col, overflow="fold")
    for out in outcomes:
        r = load_result(out.path)
        metrics = ", ".join(f"{k} {_number(v)}" for k, v in r.metrics.items())
        speed = f"{r.speed.batches_per_second:.2f}" if r.speed.batches_per_second else "-"
        table.add_row(
            str(r.seed), r.status, metrics or "-", speed, f"{r.timing.train_clock_s:.0f}s", f"{r.timing.eval_s:.0f}s",
            out.how,
        )
    console.print(table)
