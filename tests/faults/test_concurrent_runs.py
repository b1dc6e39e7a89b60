"""Two `speedrun run` on one seed folder: the second is refused while the first (its launcher,
torchrun, evaluation or training workers) holds `run.lock` or `workers.lock`, and the locks go with
their holders, however those processes end."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from launch_helpers import summary_json
from rich.console import Console

from speedrun.errors import SpeedrunError
from speedrun.locks import LOCK_NAME, WORKERS_LOCK_NAME, results_lock, seed_lock
from speedrun.run import RunOptions, run_submission
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


def _baseline_copy(tmp_path: Path) -> Path:
    """A copy of the baseline submission without its results: a test run never writes into the repository."""
    copy = tmp_path / "submissions" / "baseline"
    if not copy.exists():
        shutil.copytree(BASELINE, copy, ignore=shutil.ignore_patterns("results", "__pycache__"))
    return copy


def _run_seed0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, train: Any, runs: str = "runs") -> None:
    """run_submission of baseline seed 0 on smoke, with prepare skipped and ``train`` in place of training."""
    monkeypatch.setattr("speedrun.data.prepare.prepare", lambda *a, **k: None)
    monkeypatch.setattr("speedrun.run._train", train)
    options = RunOptions(track="smoke", seed=0, runs_dir=tmp_path / runs, data_dir=tmp_path / "data", progress=False)
    run_submission(_baseline_copy(tmp_path), options, Console(quiet=True))


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


def test_a_second_run_of_the_seed_in_another_runs_folder_is_refused(tmp_path: Path, monkeypatch):
    # Both would pass their own run.lock, train, and write the one results file; the last would win.
    results = _baseline_copy(tmp_path) / "results" / "smoke" / "seed0.json"

    def train(submission: Any, track: Any, seed: int, run_dir: Path, o: Any, lock_fds: tuple[int, ...]) -> dict:
        busy = re.escape(f"{results}: another `speedrun run` is running this seed (perhaps with another --runs-dir")
        with pytest.raises(SpeedrunError, match=busy):
            _run_seed0(tmp_path, monkeypatch, train, runs="other-runs")
        assert not (tmp_path / "other-runs").exists(), "refused before its run folder was made"
        raise _Stop

    with pytest.raises(_Stop):
        _run_seed0(tmp_path, monkeypatch, train)
    with results_lock(results):  # freed with the first launcher's block
        pass
    assert not results.parent.parent.exists(), "nothing is made in the submission before there is a result"


def test_the_results_lock_folder_must_be_this_users_alone(tmp_path: Path, monkeypatch) -> None:
    # In a shared /tmp another user could create the folder first, to hold the locks or plant links.
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    results = tmp_path / "sub" / "results" / "smoke" / "seed0.json"
    folder = tmp_path / f"speedrun-locks-{os.getuid()}"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    with pytest.raises(SpeedrunError, match=re.escape(f"{folder}: the lock folder of `speedrun run` is not a folder")):
        with results_lock(results):
            pass
    folder.chmod(0o700)
    with results_lock(results):
        (lock,) = folder.iterdir()
        assert oct(lock.stat().st_mode & 0o777) == "0o600"
    lock.unlink()
    lock.symlink_to(tmp_path / "planted")
    with pytest.raises(SpeedrunError, match=re.escape(f"{lock}: cannot create the lock of {results}")):
        with results_lock(results):
            pass
    assert not (tmp_path / "planted").exists(), "a planted link is never followed"


def _wait_until_unlocked(run_dir: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with seed_lock(run_dir):
                return
        except SpeedrunError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.parametrize("launcher_ends", ["killed", "leaving the block"])
def test_subprocesses_started_with_the_lock_keep_it_after_the_launcher_ends(tmp_path: Path, launcher_ends: str):
    """The mechanism the launcher relies on: a child given the lock's descriptor holds the flock,
    whether the launcher is SIGKILLed or leaves ``seed_lock``'s block first (an exception around
    the subprocess call): leaving the block must not unlock it for the child."""
    run_dir = tmp_path / "seed0"
    launcher = (
        "import os, signal, subprocess, sys\n"
        "from pathlib import Path\n"
        "from speedrun.locks import seed_lock\n"
        "with seed_lock(Path(sys.argv[1])) as fd:\n"
        "    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], pass_fds=(fd,),\n"
        "                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "    print(child.pid, flush=True)\n"
        "    if sys.argv[2] == 'killed':\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", launcher, str(run_dir), launcher_ends], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == (-9 if launcher_ends == "killed" else 0), proc.stderr
    child = int(proc.stdout.strip())
    try:
        with pytest.raises(SpeedrunError, match="another `speedrun run`"), seed_lock(run_dir):
            pass
    finally:
        os.kill(child, signal.SIGKILL)
    _wait_until_unlocked(run_dir)


def test_seed_lock_refuses_while_workers_of_an_earlier_run_live(tmp_path: Path) -> None:
    """torchrun's workers close inherited descriptors, so they share-lock workers.lock themselves:
    two of them hold it together, and a new run is refused until both are gone (here SIGKILLed, as
    orphans of a killed torchrun would be stopped)."""
    run_dir = tmp_path / "seed0"
    hold = (
        "import sys; from pathlib import Path; from speedrun.locks import worker_lock\n"
        "with worker_lock(Path(sys.argv[1])):\n"
        "    print('locked', flush=True); sys.stdin.read()\n"
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", hold, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        for w in workers:
            assert w.stdout.readline().strip() == "locked"
        alive = re.escape(f"{run_dir}: training processes of an earlier run of this seed are still alive")
        for w in workers:
            with pytest.raises(SpeedrunError, match=alive + r".*fuser -v .*workers\.lock"), seed_lock(run_dir):
                pass
            w.kill()
            w.wait()
    finally:
        for w in workers:
            w.kill()
            w.wait()
    with seed_lock(run_dir):
        pass


@pytest.mark.parametrize("flag", [True, False])
def test_worker_holds_the_workers_lock_while_it_trains_when_asked(tmp_path: Path, monkeypatch, flag: bool):
    import speedrun.worker

    run_dir = tmp_path / "seed0"
    seen: list[bool] = []

    def probe(args: Any) -> None:
        run_dir.mkdir(exist_ok=True)
        with open(run_dir / WORKERS_LOCK_NAME, "a") as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared with the other workers
            fcntl.flock(f, fcntl.LOCK_UN)
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append(False)
            except BlockingIOError:
                seen.append(True)

    monkeypatch.setattr(speedrun.worker, "_train_from_args", probe)
    argv = [str(BASELINE), "--track", "smoke", "--seed", "0", "--run-dir", str(run_dir)]
    assert speedrun.worker.main(argv + (["--worker-lock"] if flag else [])) == 0
    assert seen == [flag]
    with seed_lock(run_dir):  # released when the worker's main returns
        pass


def test_torchrun_and_evaluation_inherit_the_seed_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both subprocesses of a multi-process run get the descriptor of this seed's run.lock."""
    import speedrun.run

    inherited: list[tuple[int, ...]] = []
    commands: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        inherited.append(kwargs["pass_fds"])
        commands.append(cmd)
        assert kwargs["env"]["PYTHONSAFEPATH"] == "1", "children never import from the current folder"
        (fd,) = kwargs["pass_fds"]
        assert os.fstat(fd).st_ino == (run_dir / LOCK_NAME).stat().st_ino
        return subprocess.CompletedProcess(cmd, 0)

    class FakePopen:  # torchrun, which the launcher waits for
        def __init__(self, cmd: list[str], **kwargs: Any) -> None:
            fake_run(cmd, **kwargs)

        def wait(self) -> int:
            return 0

    def summary_then_stop(path: Path) -> dict:
        raise _Stop

    run_dir = tmp_path / "runs" / "baseline" / "smoke" / "seed0"
    monkeypatch.setattr("speedrun.data.prepare.prepare", lambda *a, **k: None)
    monkeypatch.setattr(speedrun.run.subprocess, "run", fake_run)
    monkeypatch.setattr(speedrun.run.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(speedrun.run, "_read_eval", summary_then_stop)
    options = RunOptions(
        track="smoke", seed=0, nproc=2, runs_dir=tmp_path / "runs", data_dir=tmp_path / "data", progress=False
    )
    run_dir.mkdir(parents=True)
    (run_dir / SUMMARY).write_text(summary_json(eval_checkpoints=["step_1"]))
    with pytest.raises(_Stop):
        run_submission(_baseline_copy(tmp_path), options, Console(quiet=True))
    assert len(inherited) == 2
    torchrun, evaluation = commands
    assert "torch.distributed.run" in torchrun and "--worker-lock" in torchrun  # the workers lock too
    assert "--worker-lock" not in evaluation
