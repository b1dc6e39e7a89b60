"""Two `speedrun run` on one seed folder: the second is refused while the first holds `run.lock`,
and the lock goes with its holder, however that process ends."""

from __future__ import annotations

import fcntl
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from speedrun.errors import SpeedrunError
from speedrun.run import LOCK_NAME, RunOptions, run_submission, seed_lock

BASELINE = Path(__file__).resolve().parents[2] / "submissions" / "baseline"


def test_seed_lock_refuses_a_second_holder_and_frees_on_release(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "baseline" / "smoke" / "seed0"
    with seed_lock(run_dir):
        assert (run_dir / LOCK_NAME).is_file()
        # A second open file description conflicts with the first, as a second process would.
        busy = re.escape(f"{run_dir}: another `speedrun run` is using this run folder")
        with pytest.raises(SpeedrunError, match=busy), seed_lock(run_dir):
            pass
    with seed_lock(run_dir):
        pass


def test_seed_lock_is_freed_when_its_holder_dies(tmp_path: Path) -> None:
    run_dir = tmp_path / "seed0"
    run_dir.mkdir()
    hold = (
        "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('locked', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(run_dir / LOCK_NAME)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SpeedrunError, match="wait for it to finish or stop it"), seed_lock(run_dir):
            pass
    finally:
        holder.kill()  # SIGKILL: no chance to unlock; the kernel frees the lock
        holder.wait()
    with seed_lock(run_dir):
        pass


class _Stop(Exception):
    pass


def _run_seed0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, train: Any) -> None:
    """run_submission of baseline seed 0 on smoke, with prepare skipped and ``train`` in place of training."""
    monkeypatch.setattr("speedrun.data.prepare.prepare", lambda *a, **k: None)
    monkeypatch.setattr("speedrun.run._train", train)
    options = RunOptions(track="smoke", seed=0, runs_dir=tmp_path / "runs", data_dir=tmp_path / "data", progress=False)
    run_submission(BASELINE, options, Console(quiet=True))


def test_run_submission_refuses_a_locked_seed_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def never(*_a: Any, **_k: Any) -> None:
        raise AssertionError("trained a seed whose run folder another run holds")

    run_dir = tmp_path / "runs" / "baseline" / "smoke" / "seed0"
    run_dir.mkdir(parents=True)
    with open(run_dir / LOCK_NAME, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SpeedrunError, match=re.escape(f"{run_dir}: another `speedrun run`")):
            _run_seed0(tmp_path, monkeypatch, never)


def test_lock_is_held_while_the_seed_trains_and_freed_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def train(submission: Any, track: Any, seed: int, run_dir: Path, o: Any) -> dict:
        with pytest.raises(SpeedrunError, match="another `speedrun run`"), seed_lock(run_dir):
            pass
        raise _Stop

    with pytest.raises(_Stop):
        _run_seed0(tmp_path, monkeypatch, train)
    with seed_lock(tmp_path / "runs" / "baseline" / "smoke" / "seed0"):
        pass
