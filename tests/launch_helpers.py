"""Helpers for tests that start torchrun (tests/ is on sys.path through its conftest)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port no one listens on now: each launch its own, so tests never meet a port a previous
    test's rendezvous still holds (a fixed port failed that way in a full run)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary_json(**fields: object) -> str:
    """A ``train_summary.json`` a worker could have written: a finished smoke run, with ``fields`` changed."""
    from speedrun.results import TrainSummary

    done = dict(
        status="ok", steps=20, final_loss=0.5, last_finite_loss=0.5, diverged_at=None, reason=None, clock_seconds=1.0,
        warmup_seconds=0.0, checkpoint_seconds=0.0, validation_seconds=0.0, data_seconds=0.0, batches_per_second=1.0,
        images_per_second=8.0, flops_per_step=1, mfu=None, peak_memory_bytes=None, kernels="torch", world_size=2,
    )
    return TrainSummary(**{**done, **fields}).model_dump_json()
