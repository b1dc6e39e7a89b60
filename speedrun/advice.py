"""What to do next: the one place that turns an error (which carries facts) plus the context the caller
knows (the seed, the command) into a remedy."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from speedrun.errors import NotSynced, OutOfMemory, SpeedrunError, TrainingInterrupted, WriteFailed


def explain(exc: SpeedrunError, again: str | None = "run the command again") -> str:
    """``exc``'s message with its remedy; ``again`` is how to go on once the cause is fixed."""
    then = f", then {again}" if again else ""
    if isinstance(exc, NotSynced):
        return f"{exc}; check the disk{then}"
    if isinstance(exc, WriteFailed):
        return f"{exc}: fix that (e.g. free disk space){then}"
    if isinstance(exc, OutOfMemory):
        return (f"{exc}. The batch is fixed by the track: spread it over more processes (--nproc) or use a device "
                f"with more memory{f'; {again}' if again else ''}")  # fmt: skip
    return str(exc)


def rerun(seed: int, resume: bool) -> str:
    """How to run seed ``seed`` again so that it resumes from its checkpoints."""
    if resume:
        return "run the same command again"
    # The same command would delete the checkpoints; and other seeds of a --seeds run must still start over.
    return f"run seed {seed} again without --no-resume (--seed {seed})"


def resume_from(root: Path, again: str) -> str:
    """How to go on: ``again`` (``rerun``) resumes from the latest checkpoint in ``root``, if any."""
    from speedrun.checkpoint import latest_checkpoint

    try:
        path = latest_checkpoint(root)
    except SpeedrunError as exc:  # a damaged ``latest``: the run would stop on it too
        return f"{again} once this is mended: {exc}"
    except OSError as exc:  # this is a message about another error: it must not raise one of its own
        return f"{again} once {exc.filename or root} can be read ({exc.strerror or exc})"
    if path is None:
        return "run the same command again (no checkpoint yet: it starts over)"
    return f"{again} to resume from the last good checkpoint {path}"


@contextmanager
def training(seed: int, resume: bool, checkpoints: Path) -> Iterator[None]:
    """Around training seed ``seed``: a full disk or out of memory says how to resume it."""
    try:
        yield
    except (WriteFailed, OutOfMemory) as exc:
        raise SpeedrunError(explain(exc, resume_from(checkpoints, rerun(seed, resume)))) from exc


@contextmanager
def once_trained(seed: int, resume: bool) -> Iterator[None]:
    """After training a ``--no-resume`` seed, say how to finish it without training it again."""
    if resume:
        yield
        return
    trained = (f"Seed {seed} is trained: {rerun(seed, False)} to evaluate and record its checkpoints; with "
               "--no-resume it trains again from step 0.")  # fmt: skip
    try:
        yield
    except SpeedrunError as exc:
        raise SpeedrunError(f"{explain(exc, None)}\n{trained}") from None
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"evaluation of seed {seed} was interrupted. {trained}", signal.SIGINT) from None
