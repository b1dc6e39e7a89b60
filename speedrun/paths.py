"""Where prepared data, runs and caches live; each can be moved by a flag or an environment variable."""

from __future__ import annotations

import os
from pathlib import Path
from shlex import quote

from speedrun.tracks import REPO_ROOT


def _root(explicit: Path | None, env: str, default: str) -> Path:
    # "~" is expanded here because no shell does it in "--runs-dir=~/x" or in a quoted variable.
    if explicit is not None:
        return Path(explicit).expanduser()
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    return REPO_ROOT / default


def nearest_existing(path: Path) -> Path:
    """``path``, or its nearest parent that exists: where creating ``path`` with its parents starts."""
    path = Path(path).absolute()
    return next(p for p in (path, *path.parents) if p.exists())


def data_root(explicit: Path | None = None) -> Path:
    """Prepared datasets: ``--data-dir``, else ``$SPEEDRUN_DATA_DIR``, else ``<repo>/data``."""
    return _root(explicit, "SPEEDRUN_DATA_DIR", "data")


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
    return _root(explicit, "SPEEDRUN_RUNS_DIR", "runs")


def cache_root(explicit: Path | None = None) -> Path:
    """Reference statistics and other derived caches: ``$SPEEDRUN_CACHE_DIR``, else ``<repo>/cache``."""
    return _root(explicit, "SPEEDRUN_CACHE_DIR", "cache")
