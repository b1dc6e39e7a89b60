"""The training process of one seed, run by ``speedrun run`` in-process or under torchrun
(``python -m speedrun.worker SUBMISSION --track T --seed S --run-dir DIR``). It alone imports the
submission's ``components.py``; rank 0 writes ``DIR/train_summary.json`` atomically."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from speedrun import advice, distributed
from speedrun.components.registry import Registry
from speedrun.devices import PARALLEL_MODES
from speedrun.errors import SpeedrunError, TrainingInterrupted, format_validation_error
from speedrun.fileio import atomic_write_text
from speedrun.locks import worker_lock
from speedrun.protocol import Component, ContractError
from speedrun.results import TrainSummary
from speedrun.submission import Submission, load_submission
from speedrun.tracks import Track

SUMMARY = "train_summary.json"


def cli_flags(**options: object) -> list[str]:
    """``--name value`` for each ``name=value``; True is a bare ``--name``, None or False leaves the flag out."""
    flags: list[str] = []
    for name, value in options.items():
        if value is not None and value is not False:
            flags += [f"--{name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return flags


def build_components(submission: Submission) -> list[Component]:
    """Instantiate the manifest's components in order (imports components.py if present)."""
    registry = Registry()
    if submission.custom_components is not None:
        registry.load_submission_components(submission.custom_components)
    out = []
    for i, entry in enumerate(submission.manifest.components):
        cls = registry.get(entry.name)
        try:
            params = cls.Params.model_validate(entry.params)
        except ValidationError as exc:
            where = f"{submission.path}/submission.toml: components.{i} ({entry.name}).params"
            raise SpeedrunError(format_validation_error(where, exc)) from None
        out.append(cls(params))
    return out


@contextlib.contextmanager
def blame_submission_code(submission: Submission) -> Iterator[None]:
    """Report a broken component contract, or an exception raised in the submission's files (with its
    frames there), as one ``SpeedrunError``; one with no frame there is a harness bug and keeps its traceback."""
    try:
        yield
    except SpeedrunError:
        raise
    except ContractError as exc:
        raise SpeedrunError(str(exc)) from exc
    except Exception as exc:
        folder = submission.path.resolve()
        files = [(Path(f.filename).resolve(), f) for f in traceback.extract_tb(exc.__traceback__)]
        frames = [(path, f) for path, f in files if path.is_relative_to(folder)]
        if not frames:
            raise
        where = "".join(f"\n  {p.relative_to(folder.parent)}, line {f.lineno}, in {f.name}: {f.line}"
                        for p, f in frames[-3:])  # fmt: skip
        raise SpeedrunError(
            f"submission '{submission.name}' raised {type(exc).__name__}: {exc}{where}\n"
            "Its code failed, not the harness; fix it and run the same command again."
        ) from exc


def train_seed(
    submission: Submission, track: Track, seed: int, run_dir: Path, data_dir: Path | None = None,
    device: str | None = None, resume: bool = True, progress: bool = True, stop_after: int | None = None,
    parallel: str = "auto", stop_message: Path | None = None,
) -> TrainSummary:  # fmt: skip
    """Train one seed and return (and, on rank 0, write) the summary. ``stop_message``: where each node's
    first worker leaves an interruption for its launcher (torchrun exits 1 whatever stopped them)."""
    from speedrun.data.source import TrainData
    from speedrun.paths import data_root
    from speedrun.provenance import code_record
    from speedrun.train import Trainer, TrainOptions

    data = TrainData.open(track, data_root(data_dir))
    options = TrainOptions(run_dir=run_dir, seed=seed, device=device, resume=resume, progress=progress,
                           stop_after=stop_after, parallel=parallel)  # fmt: skip
    header = {"submission": submission.name, "manifest": submission.manifest.model_dump(mode="json"),
              "effective_track": track.model_dump(mode="json")}  # fmt: skip
    # Hashed before components.py is imported: the result's provenance names the code that trains.
    code = code_record(submission.path)
    with blame_submission_code(submission):
        components = build_components(submission)
        trainer = Trainer(track, data, components, options, log_header=header, code=code)
        summary = trainer.run().model_copy(update={"code": code})
    if summary.status == "interrupted":
        # Not a result: no summary file, so `speedrun run` never evaluates or records this seed.
        again = resume_command(submission, track, seed, run_dir, data_dir, device, parallel, trainer.dist.world_size)
        stop = TrainingInterrupted(
            f"training of seed {seed} {summary.reason}; checkpoint step-{summary.steps:08d} is in "
            f"{run_dir / 'checkpoints'}. `{again}` resumes it; the same command with --no-resume starts "
            "the seed over from step 0",
            trainer.stop_signal,
        )
        if stop_message is not None and trainer.dist.local_rank == 0:
            _leave_stop_message(stop, stop_message)
        distributed.teardown()
        raise stop
    if trainer.dist.is_main:
        with advice.training(seed, resume, run_dir / "checkpoints"):
            atomic_write_text(run_dir / SUMMARY, summary.model_dump_json(indent=2))
    distributed.teardown()
    return summary


def _leave_stop_message(stop: TrainingInterrupted, path: Path) -> None:
    """Hand this node's stop message to its launcher, before the teardown's barrier (once another rank
    exits, torchrun stops this one). If it is not there to read, print it here instead."""
    try:
        atomic_write_text(path, json.dumps({"message": str(stop), "signum": stop.signum}))
    except SpeedrunError:
        if not path.is_file():  # a write that failed only to sync its folder did put it there
            print(f"interrupted: {stop}", file=sys.stderr)


def resume_command(submission: Submission, track: Track, seed: int, run_dir: Path, data_dir: Path | None,
                   device: str | None, parallel: str, world_size: int) -> str:  # fmt: skip
    """The ``speedrun run`` command line that continues this seed from its last checkpoint; under
    torchrun, the launch of this node as its environment describes it."""
    from speedrun.paths import runs_root

    runs = run_dir.parents[2] if len(run_dir.parents) > 2 else run_dir
    launch: dict[str, object] = {}
    if world_size > 1:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        launch["nproc"] = per_node
        if per_node < world_size:
            env = os.environ.get
            launch.update(nnodes=world_size // per_node, node_rank=env("GROUP_RANK", "0"),
                          master_addr=env("MASTER_ADDR", "127.0.0.1"), master_port=env("MASTER_PORT", "29500"))
    flags = cli_flags(
        track=track.ref, seed=seed, runs_dir=runs if runs.resolve() != runs_root().resolve() else None,
        data_dir=data_dir, device=device, parallel=parallel if parallel != "auto" else None, **launch,
    )  # fmt: skip
    return shlex.join(["speedrun", "run", str(submission.path), *flags])


def _train_from_args(args: argparse.Namespace) -> None:
    options = {k: v for k, v in vars(args).items() if k not in ("submission", "track", "worker_lock")}
    sub = load_submission(args.submission)
    train_seed(sub, sub.track(args.track), **options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m speedrun.worker")
    parser.add_argument("submission", type=Path)
    parser.add_argument("--track", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--device")
    parser.add_argument("--no-resume", dest="resume", action="store_false")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--parallel", choices=PARALLEL_MODES, default="auto")
    parser.add_argument("--worker-lock", action="store_true", help="share-lock the run folder's workers.lock")
    parser.add_argument("--stop-message", type=Path, help="hand an interruption to the launcher here")
    args = parser.parse_args(argv)

    try:
        with worker_lock(args.run_dir) if args.worker_lock else contextlib.nullcontext():
            _train_from_args(args)
    except TrainingInterrupted as exc:
        if args.stop_message is None:  # else this node's launcher reports it
            print(f"interrupted: {exc}", file=sys.stderr)
        return 128 + exc.signum  # the shell's convention for "ended by this signal"
    except SpeedrunError as exc:
        print(f"error: {advice.explain(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    code = main()
    distributed.exit_if_launched(code)
    sys.exit(code)
