"""Helpers for tests that start torchrun (tests/ is on sys.path through its conftest)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port no one listens on now: each launch its own, so tests never meet a port a previous
    test's rendezvous still holds (a fixed port failed that way in a full run)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
