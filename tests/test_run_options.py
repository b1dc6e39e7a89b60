"""`speedrun run` options are refused before anything is prepared or written; "not prepared" hints
name the data folder. (The seed lock is tested in tests/faults/test_concurrent_runs.py.)"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from launch_helpers import summary_json
from rich.console import Console

from speedrun.data.shards import read_manifest
from speedrun.data.source import TrainData
from speedrun.errors import SpeedrunError, TrainingInterrupted
from speedrun.paths import cache_root, data_root, runs_root
from speedrun.run import RunOptions, _child_env, _train, _wait_for_torchrun, check_options, run_submission
from speedrun.submission import load_submission
from speedrun.tracks import REPO_ROOT, load_track
from speedrun.worker import SUMMARY, _leave_stop_message

BASELINE = Path(__file__).resolve().parents[1] / "submissions" / "baseline"


@pytest.fixture
def untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if run_submission gets as far as preparing data or training a seed."""

    def never(*_a: Any, **_k: Any) -> None:
        raise AssertionError("run_submission went on with an invalid option or a locked run folder")

    import speedrun.data.prepare

    monkeypatch.setattr(speedrun.data.prepare, "prepare", never)
    monkeypatch.setattr("speedrun.run._train", never)


def _run(tmp_path: Path, **options: Any) -> None:
    defaults = {"track": "smoke", "runs_dir": tmp_path / "runs", "data_dir": tmp_path / "data", "progress": False}
    run_submission(BASELINE, RunOptions(**{**defaults, **options}), Console(quiet=True))


# --------------------------------------------------------------------------------------------------
# options


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"parallel": "zero"}, ["--parallel", "'zero'", "auto, ddp, fsdp"]),
        ({"device": "gpu"}, ["--device", "'gpu'", "cuda, cpu"]),
        ({"seed": -1}, ["--seed", "-1"]),
        ({"seed": 2**63}, ["--seed", str(2**63), "from 0 to 9223372036854775807"]),
        ({"master_port": 99999, "nproc": 2}, ["--master-port 99999", "from 1 to 65535"]),
        ({"seeds": 0}, ["--seeds", "0"]),
        ({"nproc": 0}, ["--nproc", "0"]),
        ({"nnodes": 2, "node_rank": 2}, ["--node-rank", "2"]),
        # smoke's global batch is 8
        ({"nproc": 3}, ["--nproc 3", "3 processes", "global batch 8"]),
        ({"nproc": 2, "nnodes": 3}, ["--nproc 2", "--nnodes 3", "6 processes", "global batch 8"]),
    ],
)
def test_bad_option_is_refused_before_anything_happens(tmp_path: Path, untouched, options, words) -> None:
    with pytest.raises(SpeedrunError) as info:
        _run(tmp_path, **options)
    for word in words:
        assert word in str(info.value)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_process_counts_that_divide_the_global_batch_pass() -> None:
    track = load_track("smoke")
    assert track.train.global_batch == 8
    for nproc, nnodes in ((1, 1), (2, 1), (4, 2), (8, 1)):
        check_options(RunOptions(nproc=nproc, nnodes=nnodes), track)


def test_unknown_device_is_refused_by_distributed_setup() -> None:
    """Python callers of the trainer skip check_options: "gpu" must not quietly train on the CPU."""
    from speedrun import distributed

    with pytest.raises(SpeedrunError, match=re.escape("device 'gpu': must be one of cuda, cpu")):
        distributed.setup("gpu")


@pytest.mark.parametrize("option", ["data_dir", "runs_dir"])
def test_folder_option_that_is_a_file_is_refused(tmp_path: Path, untouched, option: str) -> None:
    file = tmp_path / "a-file"
    file.write_text("")
    flag = "--" + option.replace("_", "-")
    with pytest.raises(SpeedrunError, match=re.escape(f"{flag} {file}: {file} is a file")):
        _run(tmp_path, **{option: file})


@pytest.mark.parametrize("option", ["data_dir", "runs_dir"])
def test_folder_option_below_a_file_is_refused(tmp_path: Path, untouched, option: str) -> None:
    file = tmp_path / "a-file"
    file.write_text("")
    flag = "--" + option.replace("_", "-")
    message = f"{flag} {file / 'sub'}: {file} is a file"
    with pytest.raises(SpeedrunError, match=re.escape(message)):
        _run(tmp_path, **{option: file / "sub"})


@pytest.mark.parametrize("python314", [False, True])
@pytest.mark.parametrize("option", ["data_dir", "runs_dir"])
def test_folder_option_with_a_name_too_long_is_refused(
    tmp_path: Path, untouched, request, option: str, python314: bool
) -> None:
    if python314:  # where Path.exists says False, not "too long"
        request.getfixturevalue("python314_path_checks")
    long = tmp_path / ("a" * 300)
    flag = "--" + option.replace("_", "-")
    with pytest.raises(SpeedrunError, match=re.escape(f"{flag} {long}: {long} cannot be used (File name too long)")):
        _run(tmp_path, **{option: long})


def test_runs_folder_where_nothing_can_be_written_is_refused(tmp_path: Path, untouched, read_only) -> None:
    # A prepared data folder may be read-only; the runs folder is written to.
    locked = tmp_path / "read-only"
    locked.mkdir()
    read_only(locked)
    message = f"--runs-dir {locked / 'runs'}: {locked} cannot be written (permission denied)"
    with pytest.raises(SpeedrunError, match=re.escape(message)):
        _run(tmp_path, runs_dir=locked / "runs")
    check_options(RunOptions(data_dir=locked / "data"), load_track("smoke"))


@pytest.mark.parametrize("node", [0, 1])
@pytest.mark.parametrize(
    "left",
    ["stop message", "stop message it cannot remove", "nothing", "stale stop message", "another node's stop message"],
)
def test_a_torchrun_launch_reports_what_its_node_left(tmp_path: Path, monkeypatch, left: str, node: int) -> None:
    """torchrun exits 1 whatever stopped its workers: a stop message this node's first worker wrote is
    the interruption (with its exit code and resume command); without one, with an earlier launch's,
    or with only another node's (nodes may share the run folder), it failed."""
    stopped = tmp_path / f"interrupted-node{node}.json"
    other = tmp_path / f"interrupted-node{1 - node}.json"
    if left == "stale stop message":
        stopped.write_text(json.dumps({"message": "an earlier launch's", "signum": signal.SIGINT}))

    def refuse(path, missing_ok=False):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    def torchrun(cmd, lock_fds):
        assert cmd[cmd.index("--stop-message") + 1] == str(stopped)  # where the workers leave it
        message = json.dumps({"message": "stopped by SIGTERM; `speedrun run x` resumes it", "signum": 15})
        if left.startswith("stop message"):
            stopped.write_text(message)
        if left == "stop message it cannot remove":
            monkeypatch.setattr(Path, "unlink", refuse)
        if left == "another node's stop message":
            other.write_text(message)
        return 1

    monkeypatch.setattr("speedrun.run._wait_for_torchrun", torchrun)
    options = RunOptions(track="smoke", nproc=2, nnodes=2 if node else 1, node_rank=node)
    launch = (load_submission(BASELINE), load_track("smoke"), 0, tmp_path, options, ())
    if left.startswith("stop message"):
        with pytest.raises(TrainingInterrupted) as info:
            _train(*launch)
        assert (str(info.value), info.value.signum) == ("stopped by SIGTERM; `speedrun run x` resumes it", 15)
    else:
        with pytest.raises(SpeedrunError, match=r"failed under torchrun \(exit 1\)") as info:
            _train(*launch)
        assert not isinstance(info.value, TrainingInterrupted)
    assert stopped.exists() == (left == "stop message it cannot remove")  # the next launch removes it


@pytest.mark.parametrize("node", [0, 1])
def test_a_torchrun_launch_with_no_resume_deletes_the_checkpoints_first(tmp_path: Path, monkeypatch, node: int):
    """Node 0's launcher deletes the old checkpoints before torchrun starts (on rank 0 alone, a
    failure would leave the other ranks waiting at their first collective); the other nodes' leave
    the shared folder alone. A deletion that fails is one message, and torchrun never starts."""
    old = tmp_path / "checkpoints" / "step-00000002"
    old.mkdir(parents=True)
    seen = []
    monkeypatch.setattr("speedrun.run._wait_for_torchrun", lambda cmd, fds: seen.append(old.exists()) or 0)
    options = RunOptions(track="smoke", nproc=2, nnodes=2 if node else 1, node_rank=node, resume=False)
    launch = (load_submission(BASELINE), load_track("smoke"), 0, tmp_path, options, ())
    if node:
        assert _train(*launch) is None and seen == [True]
        return
    (tmp_path / SUMMARY).write_text(summary_json())
    assert _train(*launch).status == "ok" and seen == [False]
    old.mkdir(parents=True)

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr("shutil.rmtree", refuse)
    with pytest.raises(SpeedrunError, match="cannot delete the old checkpoints to start the seed over"):
        _train(*launch)
    assert seen == [False]


@pytest.mark.parametrize("written", ["yes", "but its folder not synced", "no"])
def test_a_worker_hands_its_stop_message_to_the_launcher(tmp_path: Path, monkeypatch, capsys, written: str):
    """Under torchrun a node's first worker writes the interruption for its launcher and stays quiet;
    when the file is not there for the launcher to read (which then says "failed"), it prints it."""
    path = tmp_path / "interrupted-node1.json"
    stop = TrainingInterrupted("training of seed 0 stopped by SIGTERM after 2 steps", signal.SIGTERM)

    def fail(*args):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    if written != "yes":
        monkeypatch.setattr("speedrun.fileio.fsync_folder" if written == "but its folder not synced" else
                            "speedrun.fileio.write_durably", fail)
    _leave_stop_message(stop, path)
    printed = capsys.readouterr().err
    if written == "no":
        assert not path.exists() and printed == f"interrupted: {stop}\n"
    else:
        assert json.loads(path.read_text()) == {"message": str(stop), "signum": signal.SIGTERM} and printed == ""


def test_waiting_for_torchrun_from_another_thread() -> None:
    """The Python API may launch from a thread, where signal handlers cannot be set: the launcher
    still waits for torchrun, and the main thread's SIGINT handler is left as it was."""
    before = signal.getsignal(signal.SIGINT)
    codes = []
    thread = threading.Thread(target=lambda: codes.append(_wait_for_torchrun([sys.executable, "-c", "exit(3)"], ())))
    thread.start()
    thread.join(60)
    assert codes == [3] and signal.getsignal(signal.SIGINT) is before


def test_cuda_without_a_cuda_device_is_refused(tmp_path: Path, untouched, monkeypatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SpeedrunError, match="--device cuda: this machine has no usable CUDA device"):
        _run(tmp_path, device="cuda")


@pytest.mark.parametrize("env", ["SPEEDRUN_DATA_DIR", "SPEEDRUN_RUNS_DIR"])
def test_folder_env_var_that_is_a_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, untouched, env):
    file = tmp_path / "a-file"
    file.write_text("")
    monkeypatch.setenv(env, str(file))
    with pytest.raises(SpeedrunError, match=re.escape(f"${env} {file}: {file} is a file")):
        run_submission(BASELINE, RunOptions(track="smoke", progress=False), Console(quiet=True))


# --------------------------------------------------------------------------------------------------
# hints


def test_unprepared_data_hints_name_the_data_folder(tmp_path: Path) -> None:
    root = tmp_path / "elsewhere"
    with pytest.raises(SpeedrunError, match=re.escape(f"speedrun prepare --track smoke --data-dir {root}`")):
        TrainData.open(load_track("smoke"), root)
    with pytest.raises(SpeedrunError, match=re.escape(f"speedrun prepare --track <id> --data-dir {root}`")):
        read_manifest(root / "shapes-64-0000")


def test_prepare_hint_leaves_out_the_default_data_folder() -> None:
    from speedrun.paths import data_root, prepare_command

    assert prepare_command("smoke", data_root()) == "speedrun prepare --track smoke"


@pytest.mark.parametrize(
    ("env", "flag", "root"),
    [
        ("SPEEDRUN_DATA_DIR", "--data-dir", data_root),
        ("SPEEDRUN_RUNS_DIR", "--runs-dir", runs_root),
        ("SPEEDRUN_CACHE_DIR", "folder", cache_root),
    ],
)
def test_a_tilde_in_a_folder_is_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env, flag, root):
    # No shell expands "~" in "--runs-dir=~/x" or in a quoted variable; the folder is still the home one.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(env, "~/from-env")
    assert root() == tmp_path / "from-env"
    assert root(Path("~/from-flag")) == tmp_path / "from-flag"
    with pytest.raises(SpeedrunError, match=re.escape(f"{flag} ~nobody-here/x: cannot expand '~' (no such user")):
        root(Path("~nobody-here/x"))
    monkeypatch.setenv(env, "~nobody-here/x")
    with pytest.raises(SpeedrunError, match=re.escape(f"${env} ~nobody-here/x: cannot expand '~'")):
        root()


def test_child_processes_import_this_harness_not_the_current_folder(tmp_path: Path, monkeypatch) -> None:
    # The torchrun and evaluation processes run `python -m`, which would put the current folder first
    # on sys.path: a stray speedrun/ (or torch.py) there would be imported instead of this harness.
    decoy = tmp_path / "speedrun"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise SystemExit('the decoy was imported')\n")
    monkeypatch.chdir(tmp_path)
    probe = [sys.executable, "-m", "speedrun.paths"]
    plain = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    assert subprocess.run(probe, env=plain, capture_output=True, text=True).stderr.strip() == "the decoy was imported"
    child = subprocess.run(probe, env=_child_env(), capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    printed = subprocess.run(
        [sys.executable, "-c", "import speedrun; print(speedrun.__file__)"], env=_child_env(), capture_output=True,
        text=True, check=True,
    )
    assert Path(printed.stdout.strip()) == REPO_ROOT / "speedrun" / "__init__.py"
