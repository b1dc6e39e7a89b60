"""Where prepared data, runs and caches live; each can be moved by a flag or an environment variable."""

from __future__ import annotations

import os
from pathlib import Path
from shlex import quote

from speedrun.errors import SpeedrunError
from speedrun.tracks import REPO_ROOT


def _expand(path: Path, where: str) -> Path:
    # "~" is expanded here because no shell does it in "--runs-dir=~/x" or in a quoted variable.
    try:
        return path.expanduser()
    except RuntimeError:  # "~nobody-here/x", or no home folder at all
        raise SpeedrunError(f"{where} {path}: cannot expand '~' (no such user, or no home folder)") from None


def _root(explicit: Path | None, flag: str, env: str, default: str) -> Path:
    if explicit is not None:
        return _expand(Path(explicit), flag)
    if os.environ.get(env):
        return _expand(Path(os.environ[env]), f"${env}")
    return REPO_ROOT / default


def unusable_part(path: Path, *, write: bool = True) -> str | None:
    """What stops creating ``path`` with its parents, in words, or None if nothing does.

    Its nearest existing part must be a folder and, with ``write``, one this process may write in:
    "<part> is a file" or "<part> cannot be written (permission denied)"; and the system must accept
    its name ("<path> cannot be used (File name too long)").
    """
    path = Path(path).absolute()
    for existing in (path, *path.parents):
        try:
            if existing.exists():
                break
        except PermissionError:  # a parent that may not be searched: look further up
            continue
        except OSError as exc:  # a name longer than the filesystem allows, say
            return f"{existing} cannot be used ({exc.strerror or exc})"
    if not existing.is_dir():
        return f"{existing} is a file"
    if write and not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} cannot be written (permission denied)"
    return None


def data_root(explicit: Path | None = None) -> Path:
    """Prepared datasets: ``--data-dir``, else ``$SPEEDRUN_DATA_DIR``, else ``<repo>/data``."""
    return _root(explicit, "--data-dir", "SPEEDRUN_DATA_DIR", "data")


def prepare_command(track_id: str, root: Path) -> str:
    """The ``speedrun prepare`` command line that prepares ``track_id`` under data root ``root``.

    ``--data-dir`` is named unless ``root`` is the default, so the command fixes the folder looked in.
    """
    cmd = f"speedrun prepare --track {track_id}"
    if Path(root).resolve() != data_root().resolve():
        cmd += f" --data-dir {quote(str(root))}"
    return cmd


def runs_root(explicit: Path | None = None) -> Path:
    """Checkpoints and logs: ``--runs-dir``, else ``$SPEEDRUN_RUNS_DIR``, else ``<repo>/runs``."""
    return _root(explicit, "--runs-dir", "SPEEDRUN_RUNS_DIR", "runs")


def cache_root(explicit: Path | None = None) -> Path:
    """Reference statistics and other derived caches: ``$SPEEDRUN_CACHE_DIR``, else ``<repo>/cache``."""
    return _root(explicit, "folder", "SPEEDRUN_CACHE_DIR", "cache")
