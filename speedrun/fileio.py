"""File writes that readers never see half-done, and file hashes: the one copy of each helper."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO, Callable

from speedrun.errors import SpeedrunError

HASH_CHUNK = 4 << 20  # bytes read at a time when hashing


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# Bytes in one file name on the filesystems runs write to (ext4, xfs, APFS, NTFS).
NAME_MAX = 255


def temp_name(path: Path) -> Path:
    """A hidden sibling of ``path`` unique to this process."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


# The most bytes temp_name adds to a name: a pid has at most 7 digits (Linux's pid_max is at most 2**22),
# so a name that fits with it fits whichever process writes it.
TEMP_NAME_EXTRA = len("..tmp-") + len(str(2**22))


def write_durably(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Create ``path`` with ``write(handle)`` and fsync it before returning."""
    with open(path, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_folder(folder: Path) -> None:
    """Make the entries of ``folder`` durable: a rename is only on disk once its folder is synced.

    Filesystems that cannot sync a folder (some network ones answer EINVAL), and folders this
    process may write in but not read (EACCES), are left to their own guarantees rather than
    failing every write.
    """
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


def atomic_write(path: Path, write: Callable[[BinaryIO], Any], *, again: str = "run the command again") -> None:
    """Readers see the old file or the whole new one: write a temporary file, then ``os.replace``,
    and sync the folder so that a power cut after return still finds the new file.

    A failed write (disk full, permissions) removes the temporary file, leaves ``path`` as it was
    and raises ``SpeedrunError`` naming the file: it is the user's to fix, not a harness bug, and
    the message tells them to ``again`` once they have.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(tmp, write)
        os.replace(tmp, path)
    except (FileExistsError, NotADirectoryError) as exc:
        raise SpeedrunError(f"{path}: cannot write it: part of its folder's path is a file ({exc.strerror})") from exc
    except OSError as exc:
        raise SpeedrunError(
            f"{path}: cannot write it ({exc.strerror or exc}); the file is unchanged: "
            f"fix that (e.g. free disk space) and {again}"
        ) from exc
    finally:
        with suppress(OSError):  # nothing to remove, or cannot: the error above is the one to report
            tmp.unlink()
    sync_after_rename(path, again)


def sync_after_rename(path: Path, again: str = "run the command again") -> None:
    """Sync the folder of ``path``, just renamed into place; the error tells the user to ``again``.

    The new file is already what readers see, so the message says so rather than "unchanged".
    """
    try:
        fsync_folder(path.parent)
    except OSError as exc:
        raise SpeedrunError(
            f"{path}: written, but its folder could not be synced to disk ({exc.strerror or exc}); "
            f"check the disk, then {again}"
        ) from exc


def atomic_write_bytes(path: Path, data: bytes, *, again: str = "run the command again") -> None:
    atomic_write(path, lambda handle: handle.write(data), again=again)


def atomic_write_text(path: Path, text: str, *, again: str = "run the command again") -> None:
    atomic_write_bytes(path, text.encode("utf-8"), again=again)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())
