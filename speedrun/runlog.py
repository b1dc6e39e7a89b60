"""The training log ``<run>/train.jsonl`` (one JSON object a line) and the progress bar, both of rank 0 only."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import IO, Any

import torch
from pydantic import BaseModel

# A step line's keys besides the loss terms ("event" marks other lines): a term of one of these names would clash.
STEP_LOG_KEYS = frozenset({"step", "loss", "lr", "grad_norm", "step_s", "clock_s", "loss_fm", "event"})


class RunLog:
    """``train.jsonl`` of the run at ``path`` and its progress bar (``progress``), written on the ``main`` rank."""

    def __init__(self, path: Path, main: bool, progress: bool) -> None:
        self.path, self.main, self.show = path, main, progress and main
        self.file: IO[str] | None = None
        self.bar: Any = None

    def start(self, resumed_from: str | None, keep_bytes: int | None, start: int, total: int, **fields: Any) -> None:
        """Open the log for a session, a resumed one cut to its checkpoint's ``keep_bytes``; log ``fields``."""
        if self.main:
            if resumed_from and keep_bytes is not None and self.path.is_file():
                # Later lines (maybe cut mid-line by a kill) are of steps about to be re-run: the log reads as one run.
                with open(self.path, "r+b") as f:
                    if f.seek(0, os.SEEK_END) > keep_bytes:
                        f.truncate(keep_bytes)
            self.file = open(self.path, "a" if resumed_from else "w")  # noqa: SIM115 (closed by close())
            host = {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform()}
            self._write({"event": "start", "resumed_from": resumed_from, "start_step": start, **fields, **host})
            self.file.flush()
            if resumed_from:
                print(f"resuming from step {start} of {total} ({self.path.parent / 'checkpoints' / resumed_from})",
                      file=sys.stderr, flush=True)  # fmt: skip
        if self.show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            columns = TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}")
            self.bar = Progress(*columns, TimeRemainingColumn())
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def progress(self, step: int, loss: float, speed: float | None) -> None:
        """Move the progress bar, if shown, to ``step``."""
        if self.bar is not None:
            speed_info = f"  {speed:.2f} batch/s" if speed else ""
            self.bar.update(self.task, completed=step, info=f"loss {loss:.4f}{speed_info}")

    def step(self, terms: dict[str, torch.Tensor], **fields: Any) -> None:
        """A step line: ``fields``, then the loss ``terms`` (read from the device on rank 0 only)."""
        if self.file is not None:
            self._write({**fields, **{k: float(v) for k, v in terms.items()}})

    def val_loss(self, step: int, val: dict[str, Any]) -> None:
        self._write({"event": "val_loss", "step": step, **val})

    def checkpoint(self) -> int | None:
        """The log's size in bytes, all written so far flushed (rank 0; None elsewhere)."""
        if self.file is None:
            return None
        self.file.flush()
        return os.fstat(self.file.fileno()).st_size

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.bar is not None:
            self.bar.stop()

    def end(self, summary: BaseModel) -> None:
        """The end line: the summary (its code record excepted), non-finite losses as JSON NaN."""
        if self.main:
            with open(self.path, "a") as f:
                f.write(json.dumps({"event": "end", **summary.model_dump(exclude={"code"})}) + "\n")

    def _write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
