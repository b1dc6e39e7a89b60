"""The harness clock: the only time that counts toward a run's budget and its speed figures.

It runs from the first timed training step (after the untimed warmup) and is paused around
evaluation and checkpointing. Data loading happens while it runs. On CUDA every reading
synchronises the device, so queued kernels are charged to the step that launched them.
"""

from __future__ import annotations

import time

import torch


class Clock:
    """A pausable stopwatch in seconds; ``elapsed`` includes only running intervals."""

    def __init__(self, device: torch.device, offset: float = 0.0) -> None:
        self.device = device
        self._accumulated = offset
        self._started_at: float | None = None

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @property
    def running(self) -> bool:
        return self._started_at is not None

    def start(self) -> None:
        if self._started_at is None:
            self._started_at = self._now()

    def pause(self) -> float:
        if self._started_at is not None:
            self._accumulated += self._now() - self._started_at
            self._started_at = None
        return self._accumulated

    @property
    def elapsed(self) -> float:
        if self._started_at is None:
            return self._accumulated
        return self._accumulated + self._now() - self._started_at


class Paused:
    """``with Paused(clock):`` excludes a block (evaluation, checkpointing) from the clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._was_running = False

    def __enter__(self) -> Clock:
        self._was_running = self.clock.running
        self.clock.pause()
        return self.clock

    def __exit__(self, *exc: object) -> None:
        if self._was_running:
            self.clock.start()
