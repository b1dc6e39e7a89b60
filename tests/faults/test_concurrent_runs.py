"""Two `speedrun run` on one seed folder: the second is refused while the first holds `run.lock`,
and the lock goes with its holder, however that process ends."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from speedrun.errors import SpeedrunError
from speedrun.run import LOCK_NAME, RunOptions, run_submission, seed_lock
from speedrun.worker import SUMMARY

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
    def train(submission: Any, track: Any, seed: int, run_dir: Path, o: Any, lock_fds: tuple[int, ...]) -> dict:
        with pytest.raises(SpeedrunError, match="another `speedrun run`"), seed_lock(run_dir):
            pass
        raise _Stop

    with pytest.raises(_Stop):
        _run_seed0(tmp_path, monkeypatch, train)
    with seed_lock(tmp_path / "runs" / "baseline" / "smoke" / "seed0"):
        pass


def test_subprocesses_started_with_the_lock_keep_it_after_the_launcher_is_killed(tmp_path: Path) -> None:
    """The mechanism the launcher relies on: a child given the lock's descriptor holds the flock."""
    run_dir = tmp_path / "seed0"
    launcher = (
        "import os, signal, subprocess, sys\n"
        "from pathlib import Path\n"
        "from speedrun.run import seed_lock\n"
        "with seed_lock(Path(sys.argv[1])) as fd:\n"
        "    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], pass_fds=(fd,),\n"
        "                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "    print(child.pid, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", launcher, str(run_dir)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    child = int(proc.stdout.strip())
    try:
        with pytest.raises(SpeedrunError, match="another `speedrun run`"), seed_lock(run_dir):
            pass
    finally:
        os.kill(child, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        try:
            with seed_lock(run_dir):
                break
        except SpeedrunError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_torchrun_and_evaluation_inherit_the_seed_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both subprocesses of a multi-process run get the descriptor of this seed's run.lock."""
    import speedrun.run

    inherited: list[tuple[int, ...]] = []

    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        inherited.append(kwargs["pass_fds"])
        (fd,) = kwargs["pass_fds"]
        assert os.fstat(fd).st_ino == (run_dir / LOCK_NAME).stat().st_ino
        return subprocess.CompletedProcess(cmd, 0)

    def summary_then_stop(path: Path) -> dict:
        raise _Stop

    run_dir = tmp_path / "runs" / "baseline" / "smoke" / "seed0"
    monkeypatch.setattr("speedrun.data.prepare.prepare", lambda *a, **k: None)
    monkeypatch.setattr(speedrun.run.subprocess, "run", fake_run)
    monkeypatch.setattr(speedrun.run, "_read_eval", summary_then_stop)
    options = RunOptions(
        track="smoke", seed=0, nproc=2, runs_dir=tmp_path / "runs", data_dir=tmp_path / "data", progress=False
    )
    run_dir.mkdir(parents=True)
    (run_dir / SUMMARY).write_text(json.dumps({"status": "ok", "eval_checkpoints": ["step_1"]}))
    with pytest.raises(_Stop):
        run_submission(BASELINE, options, Console(quiet=True))
    assert len(inherited) == 2
