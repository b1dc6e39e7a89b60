"""File writes that readers never see half-done, and file hashes: the one copy of each helper."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO, Callable

from speedrun.errors import NotSynced, SpeedrunError, WriteFailed

NAME_MAX = 255  # bytes in one file name on the filesystems runs write to (ext4, xfs, APFS, NTFS)


def sha256_file(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def temp_name(path: Path) -> Path:
    """A hidden sibling of ``path`` unique to this process."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


# The most bytes temp_name adds to a name: Linux's pid_max is at most 2**22.
TEMP_NAME_EXTRA = len("..tmp-") + len(str(2**22))


def write_durably(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    with open(path, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_folder(folder: Path) -> None:
    """Make the entries of ``folder`` durable (a rename is on disk once its folder is synced); a folder
    that cannot be read or synced (EINVAL on some network filesystems) is left to its own guarantees."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except PermissionError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Readers see the old file or the whole new one, which a power cut after return leaves in place. A
    failed write (disk full) leaves ``path`` as it was and raises ``WriteFailed``: the user's to fix."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(tmp, write)
        os.replace(tmp, path)
    except (FileExistsError, NotADirectoryError) as exc:
        raise SpeedrunError(f"{path}: cannot write it: part of its folder's path is a file ({exc.strerror})") from exc
    except OSError as exc:
        raise WriteFailed(path, exc.strerror or str(exc)) from exc
    finally:
        with suppress(OSError):  # nothing to remove, or cannot: the error above is the one to report
            tmp.unlink()
    sync_after_rename(path)


def sync_after_rename(path: Path) -> None:
    """Sync the folder of ``path``, just renamed into place (``NotSynced`` if that fails)."""
    try:
        fsync_folder(path.parent)
    except OSError as exc:
        raise NotSynced(path, exc.strerror or str(exc)) from exc


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())
