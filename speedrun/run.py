"""``speedrun run``: validate, prepare, train each seed, evaluate in a separate process, write results.

A finished seed (valid results file) is skipped; a killed seed resumes from its last checkpoint.
Options are checked before anything is prepared or written, and each seed's run folder is locked
(``run.lock``) while it trains, is evaluated and has its result written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from speedrun.checkpoint import discard_checkpoints, read_meta, rerun_advice
from speedrun.devices import DEVICES, MAX_SEED, PARALLEL_MODES
from speedrun.errors import SpeedrunError, TrainingInterrupted
from speedrun.fileio import atomic_write_bytes
from speedrun.locks import results_lock, seed_lock
from speedrun.paths import data_root, runs_root, unusable_part
from speedrun.results import (
    EvalPoint,
    Provenance,
    Speed,
    Timing,
    code_changes,
    code_record,
    finalize,
    hardware_info,
    harness_sha256,
    load_result,
    now_iso,
    software_info,
    write_result,
)
from speedrun.submission import MANIFEST, Submission, load_submission
from speedrun.tracks import REPO_ROOT, Track, canonical_hash, load_track
from speedrun.worker import SUMMARY, train_seed


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    track: str | None = None
    seeds: int = 1
    seed: int | None = None
    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    device: str | None = None
    resume: bool = True
    data_dir: Path | None = None
    runs_dir: Path | None = None
    progress: bool = True
    parallel: str = "auto"


def run_dir_for(submission: Submission, track: Track, seed: int, runs_dir: Path | None) -> Path:
    return runs_root(runs_dir) / submission.name / track.id / f"seed{seed}"


def check_options(o: RunOptions, track: Track) -> None:
    """Refuse options that would fail (or train wrongly) later, before anything is prepared or written.

    The CLI's parser already refuses most of these; ``run_submission`` is also called from Python.
    """
    if o.parallel not in PARALLEL_MODES:
        raise SpeedrunError(f"--parallel {o.parallel!r}: must be one of {', '.join(PARALLEL_MODES)}")
    if o.device is not None and o.device not in DEVICES:
        raise SpeedrunError(f"--device {o.device!r}: must be one of {', '.join(DEVICES)} (or left out)")
    if o.seed is not None and not 0 <= o.seed <= MAX_SEED:
        raise SpeedrunError(f"--seed {o.seed}: must be from 0 to {MAX_SEED}")
    if not 1 <= o.seeds <= MAX_SEED:
        raise SpeedrunError(f"--seeds {o.seeds}: must be from 1 to {MAX_SEED}")
    if o.nproc < 1:
        raise SpeedrunError(f"--nproc {o.nproc}: must be 1 or more")
    if o.nnodes < 1:
        raise SpeedrunError(f"--nnodes {o.nnodes}: must be 1 or more")
    if not 0 <= o.node_rank < o.nnodes:
        raise SpeedrunError(f"--node-rank {o.node_rank}: must be from 0 to --nnodes - 1 ({o.nnodes - 1})")
    if not 1 <= o.master_port <= 65535:
        raise SpeedrunError(f"--master-port {o.master_port}: must be a TCP port, from 1 to 65535")
    if o.device == "cuda" and not torch.cuda.is_available():
        raise SpeedrunError("--device cuda: this machine has no usable CUDA device; use --device cpu")
    world = o.nproc * o.nnodes
    batch = track.train.global_batch
    if batch % world:
        raise SpeedrunError(
            f"--nproc {o.nproc} x --nnodes {o.nnodes} = {world} processes do not divide track '{track.id}''s "
            f"global batch {batch} (train.global_batch); use a process count that divides {batch}"
        )
    # The folders as paths.py resolves them, so $SPEEDRUN_DATA_DIR / $SPEEDRUN_RUNS_DIR are checked too.
    # Each is created later, with its parents; a prepared data folder may be read-only (prepare
    # itself refuses one it has to write in).
    for option, env, explicit, root, write in (
        ("--data-dir", "$SPEEDRUN_DATA_DIR", o.data_dir, data_root(o.data_dir), False),
        ("--runs-dir", "$SPEEDRUN_RUNS_DIR", o.runs_dir, runs_root(o.runs_dir), True),
    ):
        problem = unusable_part(root, write=write)
        if problem is not None:
            raise SpeedrunError(f"{option if explicit is not None else env} {root}: {problem}")


def _child_env(**extra: str) -> dict[str, str]:
    """The environment of the torchrun and evaluation processes this launcher starts.

    ``python -m`` puts the current folder first on ``sys.path``, where a stray ``torch.py`` or another
    checkout's ``speedrun/`` would be imported instead: PYTHONSAFEPATH (Python 3.11+) leaves it out,
    and the folder this harness is imported from goes first, so the children run this very code.
    """
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONSAFEPATH": "1", "PYTHONPATH": path, **extra}


def _train(
    submission: Submission, track: Track, seed: int, run_dir: Path, o: RunOptions, lock_fds: tuple[int, ...]
) -> dict:
    if o.nproc == 1 and o.nnodes == 1:
        return train_seed(
            submission, track, seed, run_dir, data_dir=o.data_dir, device=o.device, resume=o.resume, progress=o.progress
        )
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc-per-node={o.nproc}", f"--nnodes={o.nnodes}", f"--node-rank={o.node_rank}",
        f"--master-addr={o.master_addr}", f"--master-port={o.master_port}",
        "-m", "speedrun.worker", str(submission.path), "--track", track.id, "--seed", str(seed),
        "--run-dir", str(run_dir), "--parallel", o.parallel,
    ]
    if o.data_dir:
        cmd += ["--data-dir", str(o.data_dir)]
    if o.device:
        cmd += ["--device", o.device]
    if not o.resume:
        cmd.append("--no-resume")
    if lock_fds:  # this launcher locked the seed: its workers lock too (the other nodes' do not)
        cmd.append("--worker-lock")
    # Named here, not by the workers from their environment: a dynamic rendezvous numbers the nodes
    # itself. Nodes may share the run folder, so each has its own.
    stopped = run_dir / f"interrupted-node{o.node_rank}.json"
    cmd += ["--stop-message", str(stopped)]
    if not o.resume and o.node_rank == 0:
        # Here, not only on rank 0: should that fail, the other ranks would wait for it at their first
        # collective until torchrun stopped them.
        discard_checkpoints(run_dir / "checkpoints")
    try:
        stopped.unlink(missing_ok=True)  # an earlier launch's
    except OSError as exc:
        raise SpeedrunError(
            f"{stopped}: cannot remove an earlier launch's stop message ({exc.strerror or exc}); delete it yourself"
        ) from None
    returncode = _wait_for_torchrun(cmd, lock_fds)
    if returncode != 0:
        stop = _stop_message(stopped)
        if stop is not None:
            raise stop
        raise SpeedrunError(f"training of seed {seed} failed under torchrun (exit {returncode}); see the log above")
    if o.node_rank != 0:
        return {}
    return json.loads((run_dir / SUMMARY).read_text())


def _evaluate(checkpoint: Path, track: Track, out: Path, o: RunOptions, lock_fds: tuple[int, ...]) -> dict:
    """Evaluate in a separate process so nothing of the training process (or its code) leaks in."""
    cmd = [sys.executable, "-m", "speedrun.cli", "eval", str(checkpoint), "--track", track.id, "--out", str(out)]
    if o.device:
        cmd += ["--device", o.device]
    if o.data_dir:
        cmd += ["--data-dir", str(o.data_dir)]
    proc = subprocess.run(cmd, env=_child_env(PYTHONUNBUFFERED="1"), pass_fds=lock_fds)
    if proc.returncode != 0:
        raise SpeedrunError(f"evaluation of {checkpoint} failed (exit {proc.returncode}); see the message above")
    return _read_eval(out)


def _read_eval(path: Path) -> dict:
    """A metrics file ``speedrun eval`` wrote earlier for this run (written atomically)."""
    again = "delete it to evaluate that checkpoint again"
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpeedrunError(f"{path}: unreadable or corrupted ({exc}); {again}") from None
    if not isinstance(report, dict) or not {"step", "metrics", "samples"} <= report.keys():
        raise SpeedrunError(f"{path}: not a metrics file of `speedrun eval`; {again}")
    return report


def _evaluation_identity(track: Track) -> dict[str, str]:
    """What a metrics file must record to stand for an evaluation now, besides its weights: this
    track's version and protocol, scored by this harness code. ``speedrun eval`` records the hash of
    the track file (overrides only change training), so that is the one expected.

    Weights alone are not enough: a seed started over with --no-resume after an evaluation change
    (a new track version, a fix to a metric) trains bit-identical weights on a CPU, and its results
    would carry the old numbers under the new track and code hashes.
    """
    from speedrun.eval.run import protocol

    return {
        "track_hash": load_track(track.id).content_hash,
        "protocol_hash": canonical_hash(protocol(track)),
        "harness_sha256": harness_sha256(),
    }


def _scored_here(report: dict, checkpoint: Path, identity: dict[str, str]) -> bool:
    """Whether an earlier metrics file may stand for evaluating ``checkpoint`` now: it scored these
    very weights, and records ``identity`` (``_evaluation_identity`` of the track)."""
    weights = read_meta(checkpoint, verify=False)["files"].get("model.safetensors")
    return report.get("model_sha256") == weights and all(report.get(k) == v for k, v in identity.items())


def _finished(submission: Submission, track: Track, seed: int, results_path: Path) -> bool:
    """Whether the seed has a result of this very code and track; SpeedrunError for a damaged or stale one."""
    if not results_path.exists():
        return False
    try:
        done = load_result(results_path)
    except SpeedrunError as exc:
        raise SpeedrunError(f"{exc}. Move it away to re-run seed {seed}.") from None
    # Skipping is right only for a result of this very code and track; an older one is stale.
    changed = [str(c) for c in code_changes(done.provenance.code, code_record(submission.path))]
    if done.provenance.track_hash != load_track(track.id).content_hash:
        changed.append(f"track '{track.id}' changed")
    if changed:
        raise SpeedrunError(
            f"{results_path}: seed {seed} has a result from other code or track ({'; '.join(changed)}); "
            f"move it away to re-run seed {seed} with the current files"
        )
    return True


def run_one_seed(submission: Submission, track: Track, seed: int, o: RunOptions, console: Console) -> Path | None:
    results_path = submission.results_dir(track.id) / f"seed{seed}.json"
    # Checked before locking so a finished seed is skipped without creating its run folder.
    if _finished(submission, track, seed, results_path):
        console.print(f"seed {seed}: already finished ({results_path}), skipped")
        return results_path
    run_dir = run_dir_for(submission, track, seed, o.runs_dir)
    if o.node_rank != 0:
        # Only node 0's launcher and workers lock: on a shared filesystem the other nodes' would
        # find its locks held.
        return _train_evaluate_record(submission, track, seed, run_dir, results_path, o, console, ())
    with results_lock(results_path), seed_lock(run_dir) as lock_fd:
        # Another run may have finished this seed between the check above and taking the lock.
        if _finished(submission, track, seed, results_path):
            console.print(f"seed {seed}: already finished ({results_path}), skipped")
            return results_path
        return _train_evaluate_record(submission, track, seed, run_dir, results_path, o, console, (lock_fd,))


def _wait_for_torchrun(cmd: list[str], lock_fds: tuple[int, ...]) -> int:
    """Run torchrun to its end and return its exit status.

    A terminal's Ctrl-C reaches torchrun as well as this launcher: torchrun stops its workers, which
    finish their step and checkpoint. Dying of it here would leave them to do so unwatched and lose
    their stop message, so this launcher waits for them instead.
    """
    proc = subprocess.Popen(cmd, env=_child_env(), pass_fds=lock_fds)
    if threading.current_thread() is not threading.main_thread():
        return proc.wait()  # only the main thread may set signal handlers; signals reach it alone anyway
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)  # None: set outside Python


def _stop_message(path: Path) -> TrainingInterrupted | None:
    """The interruption this node's first worker recorded in ``path`` (and removes), or None if there is none to read.

    torchrun exits 1 whatever stopped its workers; this message has the signal and the command that
    resumes the seed.
    """
    try:
        stop = json.loads(path.read_text())
        interrupted = TrainingInterrupted(str(stop["message"]), int(stop["signum"]))
    except (OSError, ValueError, KeyError, TypeError):  # none, or not one this harness wrote
        return None
    with suppress(OSError):  # the next launch removes it first, and says so if it cannot
        path.unlink()
    return interrupted


def _train_evaluate_record(
    submission: Submission, track: Track, seed: int, run_dir: Path, results_path: Path, o: RunOptions,
    console: Console, lock_fds: tuple[int, ...],
) -> Path | None:
    wall0 = time.perf_counter()
    console.print(f"[bold]seed {seed}[/]: training {submission.name} on {track.id} -> {run_dir}")
    summary = _train(submission, track, seed, run_dir, o, lock_fds)
    if not summary:
        return None
    with _advice_once_trained(seed, o.resume):
        evals: list[dict] = []
        eval_s = 0.0
        if summary["status"] == "ok":
            identity = _evaluation_identity(track)
            for name in summary["eval_checkpoints"]:
                ckpt = run_dir / "checkpoints" / name
                out = run_dir / "eval" / f"{name}.json"
                if out.exists():
                    report = _read_eval(out)
                    if _scored_here(report, ckpt, identity):
                        evals.append(report)
                        continue
                console.print(f"seed {seed}: evaluating {name}")
                t0 = time.perf_counter()
                evals.append(_evaluate(ckpt, track, out, o, lock_fds))
                eval_s += time.perf_counter() - t0
        result = assemble_result(submission, track, seed, summary, evals, eval_s, time.perf_counter() - wall0, o)
        if changed := code_changes(summary["code"], code_record(submission.path)):
            console.print(
                f"[yellow]seed {seed}: files changed while it ran ({'; '.join(map(str, changed))}); its result names "
                "the code that trained, so `speedrun verify` will call it stale against the files now[/]"
            )
        # A write killed midway leaves only a hidden temporary file (never read); remove it so it is not
        # committed with the results.
        for name in (results_path.name, results_path.with_suffix(".png").name):
            for stale in results_path.parent.glob(f".{name}.tmp-*"):
                stale.unlink(missing_ok=True)
        if evals and evals[-1].get("grid"):
            # The final sample grid travels with the results for the leaderboard page. It is in place
            # before the results file, whose presence marks the seed finished (a re-run skips it).
            grid = run_dir / "eval" / evals[-1]["grid"]
            if grid.is_file():
                atomic_write_bytes(results_path.with_suffix(".png"), grid.read_bytes())
        write_result(results_path, result)
        console.print(f"seed {seed}: {result.status}; results -> {results_path}")
        return results_path


@contextmanager
def _advice_once_trained(seed: int, resume: bool) -> Iterator[None]:
    """After training a ``--no-resume`` seed, say how to finish it without training it again: any
    advice to run the same command again would start it over from step 0."""
    if resume:
        yield
        return
    trained = (
        f"Seed {seed} is trained: {rerun_advice(seed, False)} to evaluate and record its checkpoints; with "
        "--no-resume it trains again from step 0."
    )
    try:
        yield
    except SpeedrunError as exc:
        raise SpeedrunError(f"{exc}\n{trained}") from None
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"evaluation of seed {seed} was interrupted. {trained}", signal.SIGINT) from None


def assemble_result(submission, track, seed, summary, evals, eval_s, wall_s, o: RunOptions):
    from speedrun.data.source import dataset_manifest_sha256

    base = load_track(track.id)
    device = torch.device("cuda" if (o.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda" else "cpu")
    world = summary["world_size"]
    final = evals[-1] if evals else {"metrics": {}, "unavailable": {}}
    failure = None
    if summary["status"] != "ok":
        failure = {
            "step": summary["diverged_at"],
            "reason": summary["reason"],
            "last_finite_loss": summary["last_finite_loss"],
        }
    code = summary["code"]  # hashed before training began (train_seed)
    ref_hashes: dict[str, str] = {}
    weights: dict[str, str] = {}
    for e in evals:
        ref_hashes.update(e.get("reference_stats_sha256", {}))
        weights.update(e.get("extractor_weights", {}))
    data = {
        "run_id": f"seed{seed}",
        "submission": submission.name,
        "track": track.id,
        "track_version": track.version,
        "seed": seed,
        "status": summary["status"],
        "failure": failure,
        "steps": summary["steps"],
        "metrics": final["metrics"],
        "unavailable": final.get("unavailable", {}),
        "evals": [
            EvalPoint(step=e["step"], metrics=e["metrics"], unavailable=e.get("unavailable", {}), samples=e["samples"])
            for e in evals
        ],
        "val_loss_curve": summary["val_loss_curve"],
        "speed": Speed(
            batches_per_second=summary["batches_per_second"],
            images_per_second=summary["images_per_second"],
            flops_per_step=summary["flops_per_step"],
            mfu=summary["mfu"],
            peak_memory_bytes=summary["peak_memory_bytes"],
        ),
        "timing": Timing(
            train_clock_s=summary["clock_seconds"],
            warmup_s=summary["warmup_seconds"],
            data_s=summary["data_seconds"],
            checkpoint_s=summary["checkpoint_seconds"],
            validation_s=summary["validation_seconds"],
            eval_s=eval_s,
            wall_s=wall_s,
            gpu_hours=summary["clock_seconds"] * world / 3600 if device.type == "cuda" else 0.0,
        ),
        "kernels": summary["kernels"],
        "world_size": world,
        "hardware": hardware_info(device, world, o.nproc),
        "software": software_info(),
        "provenance": Provenance(
            manifest_sha256=code["submission_files"][MANIFEST],
            submission_files=code["submission_files"],
            harness_sha256=code["harness_sha256"],
            track_hash=base.content_hash,
            overrides=submission.manifest.flat_overrides(),
            dataset_manifest_sha256=dataset_manifest_sha256(track, data_root(o.data_dir)),
            reference_stats_sha256=ref_hashes,
            extractor_weights=weights,
        ),
        "created_at": now_iso(),
    }
    return finalize(data)


def run_submission(path: Path, o: RunOptions, console: Console) -> list[Path]:
    from speedrun.data.prepare import prepare

    submission = load_submission(path)
    track = submission.track(o.track)
    check_options(o, track)
    if o.node_rank == 0:
        prepare(track, data_root(o.data_dir))
    seeds = [o.seed] if o.seed is not None else list(range(o.seeds))
    written = [p for s in seeds if (p := run_one_seed(submission, track, s, o, console)) is not None]
    if written:
        print_summary(written, console)
    return written


def print_summary(paths: list[Path], console: Console) -> None:
    table = Table(title="Results")
    for col in ("run", "status", "steps", "metrics", "batches/s", "train clock", "eval"):
        table.add_column(col)
    for p in paths:
        r = load_result(p)
        metrics = ", ".join(f"{k} {v:.4g}" if v is not None else f"{k} n/a" for k, v in r.metrics.items())
        speed = f"{r.speed.batches_per_second:.2f}" if r.speed.batches_per_second else "-"
        table.add_row(
            f"{r.submission}/{r.track}/{r.run_id}", r.status, str(r.steps), metrics or "-", speed,
            f"{r.timing.train_clock_s:.0f}s", f"{r.timing.eval_s:.0f}s",
        )
    console.print(table)
