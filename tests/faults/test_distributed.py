"""Distributed faults: one rank of a 2-process gloo run dies once; torchrun restarts it from the checkpoint."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

from fault_helpers import copy_submission, log_rows, run, speedrun_run_cmd, subprocess_env, write_submission
from launch_helpers import free_port

from speedrun.checkpoint import latest_checkpoint

# A test-only component: rank 1 exits abruptly inside step 11 the first time only (the marker file
# from the environment records that it already died).
DIE_ONCE = '''
import os
from pathlib import Path

from speedrun.components import Component


class DieOnce(Component):
    name = "die-once"

    def losses(self, batch, prediction, state):
        marker = os.environ.get("DIE_ONCE_MARKER")
        if marker and state.rank == 1 and state.step == 11 and not Path(marker).exists():
            Path(marker).write_text("rank 1 died here")
            os._exit(1)
        return {}
'''


def torchrun(sub, run_dir, data_root, max_restarts: int) -> list[str]:
    # Static rendezvous on one port, as `speedrun run --nproc` launches it. Its agent keeps one store
    # across restarts; speedrun.distributed prefixes keys per attempt, else the restarted ranks read
    # the dead attempt's gloo addresses and fail to connect about half the time.
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
        f"--master-port={free_port()}", f"--max-restarts={max_restarts}",
        "-m", "speedrun.worker", str(sub), "--track", "smoke", "--seed", "0", "--device", "cpu",
        "--run-dir", str(run_dir), "--data-dir", str(data_root), "--no-progress", "--stop-after", "12",
    ]


def test_rank_death_restarts_from_checkpoint_with_same_losses(smoke_data_root, fault_cache, tmp_path):
    """Rank 1 dies in step 11; torchrun (--max-restarts=1) restarts both ranks, which resume from
    checkpoint 10 and end with exactly the losses of an uninterrupted 2-process run."""
    sub = write_submission(tmp_path, "ddp-fault", [{"name": "die-once"}], DIE_ONCE)
    marker = tmp_path / "died"
    env = subprocess_env(fault_cache)
    clean = run(torchrun(sub, tmp_path / "clean", smoke_data_root, 0), env)
    assert clean.returncode == 0, clean.stderr[-3000:]
    faulty_env = {**env, "DIE_ONCE_MARKER": str(marker)}
    faulty = run(torchrun(sub, tmp_path / "faulty", smoke_data_root, 1), faulty_env)
    assert faulty.returncode == 0, faulty.stderr[-3000:]
    assert marker.exists(), "rank 1 never died: the fault was not injected"
    log = (tmp_path / "faulty" / "train.jsonl").read_text()
    assert '"resumed_from": "step-00000010"' in log
    assert log_rows(tmp_path / "faulty") == log_rows(tmp_path / "clean")
    assert len(log_rows(tmp_path / "clean")[0]) == 12


def test_sigterm_under_torchrun_is_an_interruption_with_the_resume_command(smoke_data_root, fault_cache, tmp_path):
    """torchrun exits 1 whatever stopped its workers; `speedrun run --nproc 2` still reports a graceful
    stop as one: exit 128+15 and rank 0's resume command, which leaves out --no-resume (it would
    delete the checkpoint it names)."""
    sub = copy_submission(tmp_path)
    launch = ["--nproc", "2", "--master-port", str(free_port()), "--no-resume"]
    proc = run(speedrun_run_cmd(sub, tmp_path / "runs", smoke_data_root) + launch,
               subprocess_env(fault_cache, "sigterm-step:1"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 128 + signal.SIGTERM, out  # not 2, "failed under torchrun (exit 1)"
    assert "failed under torchrun" not in out, out
    assert out.count("stopped by SIGTERM after 2 steps") == 1, out  # the launcher's message, not one per rank too
    resume = re.search(r"`(speedrun run [^`]+)` resumes it", out).group(1)
    assert "--seed 0" in resume and "--nproc 2" in resume and "--no-resume" not in resume, resume
    assert not list((tmp_path / "runs" / "baseline" / "smoke" / "seed0").glob("interrupted*"))


def test_ctrl_c_under_torchrun_waits_for_the_checkpoint_and_says_how_to_resume(
    smoke_data_root, fault_cache, tmp_path
):
    """A terminal's Ctrl-C reaches `speedrun run` and torchrun (the workers run in sessions of their
    own): the launcher waits while torchrun stops the workers, which checkpoint, then reports the
    interruption with the resume command instead of dying with a bare "interrupted"."""
    sub = copy_submission(tmp_path)
    launch = ["--nproc", "2", "--master-port", str(free_port())]
    env = subprocess_env(fault_cache, "ctrl-c-step:1")
    proc = subprocess.run(speedrun_run_cmd(sub, tmp_path / "runs", smoke_data_root) + launch, env=env,
                          capture_output=True, text=True, timeout=300, start_new_session=True)  # a group of its own
    out = proc.stdout + proc.stderr
    assert proc.returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM), out
    assert "failed under torchrun" not in out and re.search(r"stopped by SIG(INT|TERM) after \d+ steps", out), out
    assert "interrupted" not in out.splitlines(), out  # the launcher's own Ctrl-C message, without the command
    assert re.search(r"`speedrun run [^`]+--seed 0[^`]*` resumes it", out), out
    ckpts = tmp_path / "runs" / "baseline" / "smoke" / "seed0" / "checkpoints"
    assert latest_checkpoint(ckpts) is not None
