"""Process death: SIGKILL at every stage of `speedrun run`, SIGTERM/SIGINT, then resume to the same numbers."""

from __future__ import annotations

import json
import re
import shlex
import signal
import sys

import pytest
from fault_helpers import (
    BASELINE,
    copy_submission,
    log_rows,
    run,
    small_track,
    speedrun_run_cmd,
    stable,
    subprocess_env,
    train_in_process,
)

from speedrun.checkpoint import latest_checkpoint, read_meta
from speedrun.components import Component
from speedrun.results import load_result
from speedrun.stops import StopRequest

KILLED = -signal.SIGKILL


def test_sigkill_at_every_stage_then_resume_matches_uninterrupted(
    reference_run, smoke_data_root, fault_cache, tmp_path
):
    """One seed of `speedrun run` (CPU, smoke), stopped seven times, ends identical to an uninterrupted run.

    SIGTERM inside step 3 (graceful: checkpoint step 4, message with the resume command, which is
    then used verbatim), SIGKILL inside step 6, SIGKILL with checkpoint 10 half written, SIGKILL
    between renaming checkpoint 20 into place and moving ``latest``, SIGKILL of the evaluator
    while it samples, SIGKILL with the results file half written; the last run completes.
    """
    sub = copy_submission(tmp_path)
    runs = tmp_path / "runs"
    run_dir = runs / "baseline" / "smoke" / "seed0"
    ckpts = run_dir / "checkpoints"
    results = sub / "results" / "smoke" / "seed0.json"
    cmd = speedrun_run_cmd(sub, runs, smoke_data_root)

    def attempt(fault: str | None, command: list[str] = cmd):
        proc = run(command, subprocess_env(fault_cache, fault))
        return proc, proc.stdout + proc.stderr

    # SIGTERM inside step 3: the step ends, checkpoint 4 is written, the message says how to resume.
    proc, out = attempt("sigterm-step:3")
    assert proc.returncode == 128 + signal.SIGTERM, out  # the shell convention, not "user error" 2
    assert "Traceback" not in out and "stopped by SIGTERM after 4 steps" in out, out
    assert latest_checkpoint(ckpts).name == "step-00000004" and not results.exists()
    hint = re.search(r"`(speedrun run [^`]+)`", out).group(1)
    resume_cmd = [sys.executable, "-m", "speedrun.cli", *shlex.split(hint)[1:], "--device", "cpu"]
    assert f"--runs-dir {runs}" in hint and "--seed 0" in hint and "--track smoke" in hint

    # SIGKILL inside step 6 (after backward, before the optimizer step), resuming from checkpoint 4.
    proc, out = attempt("kill-step:6", resume_cmd)
    assert proc.returncode == KILLED, out
    assert latest_checkpoint(ckpts).name == "step-00000004"

    # SIGKILL while checkpoint 10 is written: only a hidden, half-written temporary directory.
    proc, out = attempt("kill-ckpt:10")
    assert proc.returncode == KILLED, out
    assert [p.name for p in ckpts.glob(".step-00000010.tmp-*")] and not (ckpts / "step-00000010").exists()
    assert latest_checkpoint(ckpts).name == "step-00000004"

    # SIGKILL after checkpoint 20 is in place but before `latest` moves: resume from 10 (re-doing 10-20).
    proc, out = attempt("kill-latest:20")
    assert proc.returncode == KILLED, out
    assert (ckpts / "latest").read_text().strip() == "step-00000010" and (ckpts / "step-00000020").is_dir()
    assert not list(ckpts.glob(".step-*.tmp-*")), "the killed writer's temporary directory is cleaned up"

    # SIGKILL of the `speedrun eval` child mid-sampling: the parent reports it, nothing is recorded.
    proc, out = attempt("kill-eval:20")
    assert proc.returncode == 2 and "evaluation of" in out and "Traceback" not in out, out
    assert not (run_dir / "eval" / "step-00000020.json").exists() and not results.exists()

    # SIGKILL with half of the results file written: only a hidden temporary file exists.
    proc, out = attempt("kill-results:0")
    assert proc.returncode == KILLED, out
    assert not results.exists() and list(results.parent.glob(".seed0.json.tmp-*"))

    # The last run resumes and completes, and says where it resumed.
    proc, out = attempt(None)
    assert proc.returncode == 0, out
    assert "resuming from step 20 of 20" in out, out
    assert not list(results.parent.glob(".*")), "no temporary file left beside the results"
    for ckpt in ckpts.glob("step-*"):
        read_meta(ckpt)  # every checkpoint directory is complete and verifies
    load_result(results)
    assert stable(results) == stable(reference_run["results"])
    assert log_rows(run_dir) == log_rows(reference_run["run_dir"])
    # Running again is a no-op: the finished seed is skipped, its results untouched.
    before = results.read_bytes()
    proc, out = attempt(None)
    assert proc.returncode == 0 and "already finished" in out, out
    assert results.read_bytes() == before
    # After the submission changed, that result is stale: no silent skip, and nothing is touched.
    (sub / "EXTRA.md").write_text("added after the run\n")
    proc, out = attempt(None)
    assert proc.returncode == 2 and "Traceback" not in out, out
    assert "seed 0 has a result from other code or track (EXTRA.md added)" in out, out
    assert "`--force` re-runs seed 0" in out, out
    assert results.read_bytes() == before


class RaiseSignal(Component):
    """Test-only: delivers ``signum`` to this process inside training step ``at``."""

    name = "test-raise-signal"

    def __init__(self, signum: int, at: int) -> None:
        self.signum, self.at = signum, at

    def losses(self, batch, prediction, state):
        if state.step == self.at:
            signal.raise_signal(self.signum)
        return {}


@pytest.fixture
def python_sigint():
    """Python's own Ctrl-C handler for the test: a shell that starts the suite in the background
    without job control ignores SIGINT, and the harness rightly keeps an ignored signal ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("python_sigint")
def test_sigint_checkpoints_at_end_of_step_and_resumes_exactly(smoke_data_root, small_reference, tmp_path):
    """Ctrl-C inside step 2: the step finishes, a checkpoint of 3 steps is written, status interrupted;
    resuming gives the uninterrupted losses. The test process's own SIGINT handler is restored."""
    before = signal.getsignal(signal.SIGINT)
    track = small_track()
    run_dir = tmp_path / "run"
    trainer, summary = train_in_process(track, smoke_data_root, run_dir, components=[RaiseSignal(signal.SIGINT, 2)])
    assert summary.status == "interrupted" and summary.steps == 3
    assert trainer.stop_signal == signal.SIGINT and "stopped by SIGINT after 3 steps" in summary.reason
    assert latest_checkpoint(run_dir / "checkpoints").name == "step-00000003"
    assert signal.getsignal(signal.SIGINT) is before
    _, rest = train_in_process(track, smoke_data_root, run_dir)
    assert rest.status == "ok" and rest.steps == 6
    assert log_rows(run_dir) == log_rows(small_reference)


def test_sigterm_in_worker_exits_143_with_resume_command(smoke_data_root, fault_cache, tmp_path):
    """`python -m speedrun.worker` (what torchrun runs) stops on SIGTERM with exit 128+15 and no summary."""
    sub = copy_submission(tmp_path)
    run_dir = tmp_path / "runs" / "baseline" / "smoke" / "seed0"
    cmd = [sys.executable, "-m", "speedrun.worker", str(sub), "--track", "smoke", "--seed", "0", "--device", "cpu",
           "--run-dir", str(run_dir), "--data-dir", str(smoke_data_root), "--no-progress", "--stop-after", "4"]
    proc = run(cmd, subprocess_env(fault_cache, "sigterm-step:1"))
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "interrupted: training of seed 0 stopped by SIGTERM after 2 steps" in proc.stderr
    resume = f"speedrun run {sub} --track smoke --seed 0 --runs-dir {tmp_path / 'runs'} --data-dir {smoke_data_root}"
    assert f"`{resume} --device cpu` resumes it" in proc.stderr  # the device it ran on, not the default
    assert "with --no-resume starts the seed over from step 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "train_summary.json").exists()
    meta = read_meta(latest_checkpoint(run_dir / "checkpoints"))
    assert meta.step == 2
    rows = [json.loads(x) for x in (run_dir / "train.jsonl").read_text().splitlines()]
    assert rows[-1]["event"] == "end" and rows[-1]["status"] == "interrupted"


def test_resume_command_repeats_the_launch(tmp_path, monkeypatch):
    """Under torchrun the printed command carries the device, the parallel mode and, per node, the
    processes per node, the node count, this node's rank and the rendezvous."""
    from speedrun.submission import load_submission
    from speedrun.tracks import load_track
    from speedrun.worker import resume_command

    sub, track = load_submission(BASELINE), load_track("smoke")
    run_dir = tmp_path / "runs" / "baseline" / "smoke" / "seed3"
    prefix = f"speedrun run {sub.path} --track smoke --seed 3 --runs-dir {tmp_path / 'runs'}"
    torchrun = {"LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1", "MASTER_ADDR": "node-a", "MASTER_PORT": "29511"}
    for name, value in torchrun.items():
        monkeypatch.setenv(name, value)
    assert resume_command(sub, track, 3, run_dir, None, "cuda", "fsdp", 8) == (
        f"{prefix} --device cuda --parallel fsdp --nproc 4 --nnodes 2 --node-rank 1 --master-addr node-a "
        "--master-port 29511"
    )
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert resume_command(sub, track, 3, run_dir, None, None, "auto", 8) == f"{prefix} --nproc 8"


def test_resume_drops_log_lines_written_after_the_checkpoint(smoke_data_root, small_reference, tmp_path):
    """Whatever a killed process flushed past its last checkpoint (whole records, or half of one when
    the buffer filled mid-line) is cut on resume: train.jsonl reads as one uninterrupted run."""
    run_dir = tmp_path / "run"
    train_in_process(small_track(), smoke_data_root, run_dir, stop_after=4)
    with open(run_dir / "train.jsonl", "a") as log:
        log.write('{"step": 4, "loss": 9.9, "lr": 0.001, "grad_norm": 1.0}\n{"step": 5, "lo')
    train_in_process(small_track(), smoke_data_root, run_dir)
    rows = [json.loads(line) for line in (run_dir / "train.jsonl").read_text().splitlines()]  # every line parses
    assert [r["resumed_from"] for r in rows if r.get("event") == "start"] == [None, "step-00000004"]
    assert log_rows(run_dir) == log_rows(small_reference)


@pytest.mark.usefixtures("python_sigint")
def test_second_ctrl_c_interrupts_at_once_and_ignored_signals_stay_ignored():
    with StopRequest() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested and stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        stop.handled = True
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as under nohup
    try:
        with StopRequest() as stop:
            signal.raise_signal(signal.SIGTERM)
            assert not stop.requested
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)

