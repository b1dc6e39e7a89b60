"""The harness clock, the only time that counts toward a run's budget and speed: from the first timed step, data
loading included, paused around evaluation and checkpoints; on CUDA a reading synchronises the device."""

from __future__ import annotations

import statistics
import time

import torch

from speedrun import distributed

# Steps per batches/s reading; the figure is their median, without the first window (warm-up) if there are ≥3.
SPEED_WINDOW = 20


class Clock:
    """A pausable stopwatch in seconds; ``elapsed`` includes only running intervals."""

    def __init__(self, device: torch.device, offset: float = 0.0) -> None:
        self.device, self._accumulated, self._started_at = device, offset, None

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

    def pause(self) -> None:
        if self._started_at is not None:
            self._accumulated += self._now() - self._started_at
            self._started_at = None

    @property
    def elapsed(self) -> float:
        return self._accumulated if self._started_at is None else self._accumulated + self._now() - self._started_at


class Paused:
    """``with Paused(clock):`` excludes a block (evaluation, checkpointing) from the clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def __enter__(self) -> None:
        self._was_running = self.clock.running
        self.clock.pause()

    def __exit__(self, *exc: object) -> None:
        if self._was_running:
            self.clock.start()


class Budget:
    """When the run ends: after ``steps`` (or ``stop_after``) or the step its clock passed ``max_seconds``; a resume
    after step ``start`` continues it, told whether that step ``spent`` the budget (its clock may pass it unspent)."""

    def __init__(self, clock: Clock, dist: distributed.Dist, steps: int, max_seconds: float | None,
                 stop_after: int | None, start: int = 0, spent: bool = False) -> None:  # fmt: skip
        self.clock, self.dist, self.steps, self.max_seconds = clock, dist, steps, max_seconds
        self.end = steps if stop_after is None else min(steps, stop_after)
        self.spent_at: int | None = None  # the step after which the timed budget ran out
        if max_seconds is not None and spent:
            self.end = self.spent_at = start

    def run_clock(self) -> float:
        """The run's clock in seconds: its slowest rank's (rank 0's starts last, after the log header). A collective."""
        elapsed = torch.tensor(self.clock.elapsed, dtype=torch.float64, device=self.clock.device)
        return float(distributed.all_reduce(elapsed, self.dist, "max"))

    def last(self, done: int) -> bool:
        """After step ``done``: whether it is the budget's last (a collective decision: every rank stops there)."""
        if self.max_seconds is not None and done < self.steps and self.run_clock() >= self.max_seconds:
            self.end = self.spent_at = done
        return done in (self.steps, self.spent_at)


def median_speed(step_seconds: list[float]) -> float | None:
    """Median batches/s over consecutive windows of SPEED_WINDOW steps (first window dropped if ≥3)."""
    windows = [step_seconds[i : i + SPEED_WINDOW] for i in range(0, len(step_seconds), SPEED_WINDOW)]
    windows = [w for w in windows if len(w) == SPEED_WINDOW] or ([step_seconds] if step_seconds else [])
    if len(windows) >= 3:
        windows = windows[1:]
    rates = [len(w) / sum(w) for w in windows if sum(w) > 0]
    return statistics.median(rates) if rates else None
