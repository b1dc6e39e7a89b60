"""The locks that keep one seed's run folder to one run at a time, and one shard of a prepared
dataset to one writer (``shard_lock``).

A seed is trained by up to three kinds of process: the ``speedrun run`` launcher, the torchrun agent
and the evaluation process it starts (both inherit the launcher's lock), and torchrun's workers.
torchrun starts its workers in new sessions with every inherited descriptor closed, so they cannot
share the launcher's lock: each takes a shared lock of its own on a second file, and a new run is
refused while any of them is alive. The kernel releases a ``flock`` when the last process holding
its descriptor ends, however it dies (SIGKILL included), so a killed run never leaves a stale lock
and nothing needs cleaning up. A third lock, in a temporary folder and named for the seed's results
file, keeps two launchers with different run folders from writing that one file (``results_lock``).
The files stay: deleting one would let a third run lock a fresh file while the second still holds
the old one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from speedrun.errors import SpeedrunError

LOCK_NAME = "run.lock"
WORKERS_LOCK_NAME = "workers.lock"
SHARD_LOCKS = ".locks"  # folder of a dataset being prepared that holds its shards' lock files


@contextmanager
def seed_lock(run_dir: Path) -> Iterator[int]:
    """Hold an exclusive lock on ``run_dir/run.lock`` so that no second ``speedrun run`` trains this seed.

    Two runs in one folder would write the same checkpoints and log over each other. Refuses, too,
    while workers of an earlier run still hold ``workers.lock`` (their torchrun was killed under
    them). Yields the descriptor for the torchrun and evaluation subprocesses to inherit, so the seed
    stays locked while they live even if this launcher is killed first. Leaving the block closes
    this process's copy and never unlocks explicitly: an unlock would free the lock for the
    subprocesses sharing it too.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    with open(path, "a") as handle:
        _lock_exclusive(
            handle,
            f"{run_dir}: another `speedrun run` is using this run folder ({path} is locked); wait for it to "
            "finish or stop it, then run this command again",
        )
        workers = run_dir / WORKERS_LOCK_NAME
        with open(workers, "a") as probe:  # closing it drops the probe's lock; nothing inherits it
            _lock_exclusive(
                probe,
                f"{run_dir}: training processes of an earlier run of this seed are still alive ({workers} "
                f"is locked: their torchrun was stopped under them); stop them (`fuser -v {workers}` lists "
                "them), then run this command again",
            )
        yield handle.fileno()


@contextmanager
def results_lock(results_path: Path) -> Iterator[None]:
    """Hold an exclusive lock for the results file ``<submission>/results/<track>/seedN.json`` while
    this launcher runs that seed.

    ``run.lock`` lives in the run folder, so two runs of one seed with different ``--runs-dir`` would
    both pass it, train, and write the one results file (the last to finish wins). Only the launcher
    writes that file, so only the launcher holds this lock. The lock file lives in this user's folder
    of the system's temporary directory (``$TMPDIR``, so both runs need the same one), named by a hash
    of the results file's absolute path, so that nothing is created in the submission before there
    is a result. That folder must be a real one of this user's that nobody else may write in: in a
    shared ``/tmp`` another user could otherwise plant links or hold the locks.
    """
    folder = Path(tempfile.gettempdir()) / f"speedrun-locks-{os.getuid()}"
    path = folder / f"{hashlib.sha256(str(results_path.resolve()).encode()).hexdigest()[:32]}.lock"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
            raise SpeedrunError(
                f"{folder}: the lock folder of `speedrun run` is not a folder of this user that only they "
                "may write in; remove it (or set $TMPDIR elsewhere) and run the command again"
            )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise SpeedrunError(f"{path}: cannot create the lock of {results_path} ({exc.strerror or exc})") from None
    with open(fd, "a") as handle:
        _lock_exclusive(
            handle,
            f"{results_path}: another `speedrun run` is running this seed (perhaps with another --runs-dir; "
            f"{path} is locked); wait for it to finish or stop it, then run this command again",
        )
        yield


def _lock_exclusive(handle: IO[str], refusal: str) -> None:
    """Take an exclusive ``flock`` on ``handle`` now, or refuse with ``refusal`` if anyone holds one."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SpeedrunError(refusal) from None


@contextmanager
def worker_lock(run_dir: Path) -> Iterator[None]:
    """Hold a shared lock on ``run_dir/workers.lock`` for a torchrun worker's whole life.

    Shared, because the run's workers hold it together. Taken first thing in the worker's ``main``,
    so a worker runs unlocked only during its interpreter's start-up (imports, seconds), and then
    only if torchrun, which holds the launcher's lock, is killed within them. Processes forked from
    the worker (data loader workers) inherit it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / WORKERS_LOCK_NAME, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        yield


@contextmanager
def shard_lock(dataset: Path, split: str, name: str, on_wait: Callable[[Path], None] | None) -> Iterator[bool]:
    """Lock shard ``name`` of ``split`` exclusively while it is checked, built and written; yields
    whether this process holds the lock.

    Two prepares of one data folder (two ``speedrun run`` of different seeds started together on a
    fresh machine) share the shards out: each first passes over the shards the other holds
    (``on_wait=None`` yields False at once), then comes back to them, waiting after ``on_wait(lock
    file)`` says so, and finds them written. The holder is making progress, and if it is killed the
    kernel releases its lock. Without the lock each deleted the other's partial copy as the debris
    of a killed writer.
    """
    path = dataset / SHARD_LOCKS / f"{split}-{name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except OSError as exc:
        raise SpeedrunError(f"{path}: cannot create the lock of shard {split}/{name} ({exc.strerror or exc})") from None
    with handle:
        try:
            held = _lock_or_wait(handle, path, on_wait)
        except OSError as exc:  # a filesystem without flock (some network ones)
            raise SpeedrunError(
                f"{path}: cannot lock shard {split}/{name} ({exc.strerror or exc}); prepare the data on a local "
                "filesystem (--data-dir, $SPEEDRUN_DATA_DIR)"
            ) from None
        yield held


def _lock_or_wait(handle: IO[str], path: Path, on_wait: Callable[[Path], None] | None) -> bool:
    """Lock ``handle`` exclusively now; if another process holds it, wait for it after ``on_wait(path)``,
    or with no ``on_wait`` return False without the lock."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if on_wait is None:
            return False
        on_wait(path)
        fcntl.flock(handle, fcntl.LOCK_EX)
    return True
