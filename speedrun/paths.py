"""Where prepared data, runs and caches live; each can be moved by a flag or an environment variable."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from shlex import quote

from speedrun.errors import SpeedrunError
from speedrun.fileio import NAME_MAX
from speedrun.tracks import REPO_ROOT


def _root(explicit: Path | None, flag: str, env: str, default: str) -> Path:
    if explicit is None and not os.environ.get(env):
        return REPO_ROOT / default
    path, where = (Path(explicit), flag) if explicit is not None else (Path(os.environ[env]), f"${env}")
    try:  # no shell expands "~" in "--runs-dir=~/x" or in a quoted variable
        return path.expanduser()
    except RuntimeError:  # "~nobody-here/x", or no home folder at all
        raise SpeedrunError(f"{where} {path}: cannot expand '~' (no such user, or no home folder)") from None


def lookup(path: Path) -> str | None:
    """What is at ``path``: "folder", "file" (anything else), or None where nothing is. Unlike
    ``Path.exists`` (False from Python 3.14), raises OSError for a name too long or a folder not searchable."""
    try:
        found = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return "folder" if stat.S_ISDIR(found.st_mode) else "file"


def unusable_part(path: Path, *, write: bool = True) -> str | None:
    """What stops creating ``path`` with its parents, in words ("<part> is a file"), or None: its nearest
    existing part must be a folder to enter (and ``write`` in), none a broken link, and the names to create must fit."""
    path = Path(path).absolute()
    refused: OSError | None = None  # a lookup the system refused for another reason than permission
    denied = False
    for existing in (path, *path.parents):
        try:
            found = lookup(existing)
        except PermissionError:  # a folder above may not be searched: the first one that can be looked at
            denied = True
            continue
        except OSError as exc:  # a name too long (named below, where it can be), a symbolic link loop
            refused = exc  # the outermost: the part at fault
            continue
        if found is not None:
            break
        if os.path.islink(existing):  # mkdir(exist_ok=True) fails on it: "File exists"
            return f"{existing} is a broken symbolic link (to {os.readlink(existing)})"
    if found == "file":
        return f"{existing} is a file"
    if denied or not os.access(existing, os.X_OK):
        return f"{existing} cannot be entered (permission denied)"
    if write and not os.access(existing, os.W_OK):
        return f"{existing} cannot be written (permission denied)"
    missing = [p for p in (path, *path.parents) if len(p.parts) > len(existing.parts)]
    for part in reversed(missing):  # the outermost name too long
        if len(os.fsencode(part.name)) > NAME_MAX:
            return f"{part} cannot be used ({os.strerror(errno.ENAMETOOLONG)})"
    if refused is not None:
        return f"{refused.filename or path} cannot be used ({refused.strerror or refused})"
    return None


def data_root(explicit: Path | None = None) -> Path:
    """Prepared datasets: ``--data-dir``, else ``$SPEEDRUN_DATA_DIR``, else ``<repo>/data``."""
    return _root(explicit, "--data-dir", "SPEEDRUN_DATA_DIR", "data")


def prepare_command(track: str, root: Path) -> str:
    """The ``speedrun prepare`` command line for ``track`` (an id or a track file), naming ``root`` unless default."""
    cmd = f"speedrun prepare --track {track}"
    if Path(root).resolve() != data_root().resolve():
        cmd += f" --data-dir {quote(str(root))}"
    return cmd


def runs_root(explicit: Path | None = None) -> Path:
    """Checkpoints and logs: ``--runs-dir``, else ``$SPEEDRUN_RUNS_DIR``, else ``<repo>/runs``."""
    return _root(explicit, "--runs-dir", "SPEEDRUN_RUNS_DIR", "runs")


def cache_root(explicit: Path | None = None) -> Path:
    """Reference statistics and other derived caches: ``$SPEEDRUN_CACHE_DIR``, else ``<repo>/cache``."""
    return _root(explicit, "folder", "SPEEDRUN_CACHE_DIR", "cache")
