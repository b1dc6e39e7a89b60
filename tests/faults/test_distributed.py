"""Distributed faults: one rank of a 2-process gloo run dies once; torchrun restarts it from the checkpoint."""

from __future__ import annotations

import socket
import sys

from fault_helpers import log_rows, run, subprocess_env, write_submission

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
