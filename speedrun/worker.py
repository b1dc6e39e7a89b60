"""The training process of one seed: what ``speedrun run`` runs in-process or under torchrun.

``python -m speedrun.worker SUBMISSION --track T --seed S --run-dir DIR`` builds the components
(importing the submission's ``components.py`` here and only here), trains, and writes
``DIR/train_summary.json`` atomically on rank 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

from speedrun import distributed
from speedrun.checkpoint import rerun_advice
from speedrun.components.base import Component
from speedrun.components.registry import Registry
from speedrun.devices import PARALLEL_MODES
from speedrun.errors import SpeedrunError, TrainingInterrupted, format_validation_error
from speedrun.fileio import atomic_write_text
from speedrun.locks import worker_lock
from speedrun.submission import Submission, load_submission
from speedrun.tracks import Track

SUMMARY = "train_summary.json"


def build_components(submission: Submission) -> list[Component]:
    """Instantiate the manifest's components in order (imports components.py if present)."""
    from pydantic import ValidationError

    registry = Registry()
    if submission.custom_components is not None:
        registry.load_submission_components(submission.custom_components)
    out = []
    for i, entry in enumerate(submission.manifest.components):
        cls = registry.get(entry.name)
        try:
            params = cls.Params.model_validate(entry.params)
        except ValidationError as exc:
            raise SpeedrunError(
                format_validation_error(f"{submission.path}/submission.toml: components.{i} ({entry.name}).params", exc)
            ) from None
        out.append(cls(params))
    return out


@contextlib.contextmanager
def blame_submission_code(submission: Submission) -> Iterator[None]:
    """Report an exception raised in the submission's own files as one ``SpeedrunError`` naming them.

    The message carries the exception and the submission's frames (file, line, source), which is what
    its author needs; an exception with no frame in the submission is a harness bug and keeps its
    full traceback.
    """
    try:
        yield
    except SpeedrunError:
        raise
    except Exception as exc:
        folder = submission.path.resolve()
        frames = [
            f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve().is_relative_to(folder)
        ]
        if not frames:
            raise
        where = "".join(
            f"\n  {Path(f.filename).resolve().relative_to(folder.parent)}, line {f.lineno}, in {f.name}: {f.line}"
            for f in frames[-3:]
        )
        raise SpeedrunError(
            f"submission '{submission.name}' raised {type(exc).__name__}: {exc}{where}\n"
            "Its code failed, not the harness; fix it and run the same command again."
        ) from exc


def train_seed(
    submission: Submission,
    track: Track,
    seed: int,
    run_dir: Path,
    data_dir: Path | None = None,
    device: str | None = None,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
    parallel: str = "auto",
    stop_message: Path | None = None,
) -> dict:
    """Train one seed and return (and, on rank 0, write) the summary.

    Under torchrun, which exits 1 whatever stopped its workers, ``stop_message`` is the file where
    each node's first worker leaves an interruption for that node's launcher to report.
    """
    from speedrun.data.source import TrainData
    from speedrun.paths import data_root
    from speedrun.results import code_record
    from speedrun.train import Trainer, TrainOptions

    data = TrainData.open(track, data_root(data_dir))
    options = TrainOptions(
        run_dir=run_dir, seed=seed, device=device, resume=resume, progress=progress, stop_after=stop_after,
        parallel=parallel,
    )
    header = {
        "submission": submission.name,
        "manifest": submission.manifest.model_dump(mode="json"),
        "effective_track": track.model_dump(mode="json"),
    }
    # Hashed before components.py is imported: the code that trains is the code these name.
    code = code_record(submission.path)
    with blame_submission_code(submission):
        components = build_components(submission)
        trainer = Trainer(track, data, components, options, log_header=header, code=code)
        summary = trainer.run().to_json()
    summary["code"] = code  # the result's provenance names this code, not the files at the run's end
    if summary["status"] == "interrupted":
        # Not a result: no summary file, so `speedrun run` never evaluates or records this seed.
        again = resume_command(submission, track, seed, run_dir, data_dir, device, parallel, trainer.dist.world_size)
        stop = TrainingInterrupted(
            f"training of seed {seed} {summary['reason']}; checkpoint step-{summary['steps']:08d} is in "
            f"{run_dir / 'checkpoints'}. `{again}` resumes it; the same command with --no-resume starts "
            "the seed over from step 0",
            trainer.stop_signal,
        )
        if stop_message is not None and trainer.dist.local_rank == 0:
            _leave_stop_message(stop, stop_message)
        distributed.teardown()
        raise stop
    if trainer.dist.is_main:
        atomic_write_text(run_dir / SUMMARY, json.dumps(summary, indent=2), again=rerun_advice(seed, resume))
    distributed.teardown()
    return summary


def _leave_stop_message(stop: TrainingInterrupted, path: Path) -> None:
    """Hand this node's stop message to its launcher, which reports it (the workers stay quiet).

    Written before the teardown's barrier: once another rank exits, torchrun stops this one. If it
    is not there to read, the launcher says "failed", so the message is printed here instead (a
    write that failed only to sync its folder did put it there).
    """
    try:
        atomic_write_text(path, json.dumps({"message": str(stop), "signum": stop.signum}))
    except SpeedrunError:
        if not path.is_file():
            print(f"interrupted: {stop}", file=sys.stderr)


def resume_command(
    submission: Submission,
    track: Track,
    seed: int,
    run_dir: Path,
    data_dir: Path | None,
    device: str | None,
    parallel: str,
    world_size: int,
) -> str:
    """The ``speedrun run`` command line that continues this seed from its last checkpoint.

    Under torchrun the launch comes from its environment: processes per node, and for several nodes
    this node's rank and the rendezvous (each node runs its own line).
    """
    from shlex import quote

    from speedrun.paths import runs_root

    cmd = f"speedrun run {quote(str(submission.path))} --track {track.id} --seed {seed}"
    runs = run_dir.parents[2] if len(run_dir.parents) > 2 else run_dir
    if runs.resolve() != runs_root().resolve():
        cmd += f" --runs-dir {quote(str(runs))}"
    if data_dir is not None:
        cmd += f" --data-dir {quote(str(data_dir))}"
    if device is not None:
        cmd += f" --device {device}"
    if parallel != "auto":
        cmd += f" --parallel {parallel}"
    if world_size > 1:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        cmd += f" --nproc {per_node}"
        if per_node < world_size:
            cmd += (
                f" --nnodes {world_size // per_node} --node-rank {os.environ.get('GROUP_RANK', '0')}"
                f" --master-addr {quote(os.environ.get('MASTER_ADDR', '127.0.0.1'))}"
                f" --master-port {os.environ.get('MASTER_PORT', '29500')}"
            )
    return cmd


def _train_from_args(args: argparse.Namespace) -> None:
    sub = load_submission(args.submission)
    train_seed(
        sub,
        sub.track(args.track),
        args.seed,
        args.run_dir,
        data_dir=args.data_dir,
        device=args.device,
        resume=not args.no_resume,
        progress=not args.no_progress,
        stop_after=args.stop_after,
        parallel=args.parallel,
        stop_message=args.stop_message,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m speedrun.worker")
    parser.add_argument("submission", type=Path)
    parser.add_argument("--track", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--stop-after", type=int, default=None)
    parser.add_argument("--parallel", choices=PARALLEL_MODES, default="auto")
    parser.add_argument("--worker-lock", action="store_true", help="share-lock the run folder's workers.lock")
    parser.add_argument("--stop-message", type=Path, default=None, help="hand an interruption to the launcher here")
    args = parser.parse_args(argv)

    try:
        with worker_lock(args.run_dir) if args.worker_lock else contextlib.nullcontext():
            _train_from_args(args)
    except TrainingInterrupted as exc:
        if args.stop_message is None:  # else this node's launcher reports it
            print(f"interrupted: {exc}", file=sys.stderr)
        return 128 + exc.signum  # the shell's convention for "ended by this signal"
    except SpeedrunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
