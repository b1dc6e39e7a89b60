"""The locks that keep one seed's run folder to one run at a time, and one shard of a prepared dataset
to one writer. All are ``flock``s, which the kernel releases when the last process holding the
descriptor dies (SIGKILL included), so no stale lock is ever left; the lock files stay, since deleting
one would let a third run lock a fresh file while the second still holds the old one."""

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
AGAIN = "run this command again"


@contextmanager
def seed_lock(run_dir: Path) -> Iterator[int]:
    """Lock ``run_dir/run.lock`` so that no second ``speedrun run`` trains this seed, refusing too while
    workers of an earlier run hold ``workers.lock``. Yields the descriptor for the torchrun and
    evaluation processes to inherit; it is closed, never unlocked, which would free it for them too."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    with open(path, "a") as handle:
        if not _try_lock(handle):
            raise SpeedrunError(f"{run_dir}: another `speedrun run` is using this run folder ({path} is locked); "
                                f"wait for it to finish or stop it, then {AGAIN}")  # fmt: skip
        workers = run_dir / WORKERS_LOCK_NAME
        with open(workers, "a") as probe:  # closing it drops the probe's lock; nothing inherits it
            if not _try_lock(probe):
                raise SpeedrunError(f"{run_dir}: training processes of an earlier run of this seed are still alive "
                                    f"({workers} is locked: their torchrun was stopped under them); stop them "
                                    f"(`fuser -v {workers}` lists them), then {AGAIN}")  # fmt: skip
        yield handle.fileno()


@contextmanager
def results_lock(results_path: Path) -> Iterator[None]:
    """Lock the results file ``seedN.json`` while this launcher runs the seed: two runs with different
    ``--runs-dir`` both pass ``run.lock``. The lock file, named by a hash of the path, lives in this
    user's private folder of ``$TMPDIR`` (nothing is created in the submission before a result)."""
    folder = Path(tempfile.gettempdir()) / f"speedrun-locks-{os.getuid()}"
    path = folder / f"{hashlib.sha256(str(results_path.resolve()).encode()).hexdigest()[:32]}.lock"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
        # In a shared /tmp another user could otherwise plant links or hold the locks.
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
            raise SpeedrunError(f"{folder}: the lock folder of `speedrun run` is not a folder of this user that only "
                                f"they may write in; remove it (or set $TMPDIR elsewhere), then {AGAIN}")  # fmt: skip
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise SpeedrunError(f"{path}: cannot create the lock of {results_path} ({exc.strerror or exc})") from None
    with open(fd, "a") as handle:
        if not _try_lock(handle):
            raise SpeedrunError(f"{results_path}: another `speedrun run` is running this seed (perhaps with another "
                                f"--runs-dir; {path} is locked); wait for it or stop it, then {AGAIN}")  # fmt: skip
        yield


def _try_lock(handle: IO[str]) -> bool:
    """Take an exclusive ``flock`` on ``handle`` now; False if another process holds one."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def worker_lock(run_dir: Path) -> Iterator[None]:
    """Share-lock ``run_dir/workers.lock`` for a torchrun worker's life (torchrun closes the launcher's
    descriptor in its workers); processes forked from the worker inherit it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / WORKERS_LOCK_NAME, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        yield


@contextmanager
def shard_lock(dataset: Path, split: str, name: str, on_wait: Callable[[Path], None] | None) -> Iterator[bool]:
    """Lock shard ``name`` of ``split`` while it is checked, built and written; yields whether this process
    holds the lock. Held elsewhere, ``on_wait=None`` yields False at once (come back to it later); else
    it waits after ``on_wait(lock file)``."""
    path = dataset / SHARD_LOCKS / f"{split}-{name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except OSError as exc:
        raise SpeedrunError(f"{path}: cannot create the lock of shard {split}/{name} ({exc.strerror or exc})") from None
    with handle:
        try:
            held = _try_lock(handle)
            if not held and on_wait is not None:
                on_wait(path)
                fcntl.flock(handle, fcntl.LOCK_EX)
                held = True
        except OSError as exc:  # a filesystem without flock (some network ones)
            raise SpeedrunError(f"{path}: cannot lock shard {split}/{name} ({exc.strerror or exc}); prepare the data "
                                "on a local filesystem (--data-dir, $SPEEDRUN_DATA_DIR)") from None  # fmt: skip
        yield held
