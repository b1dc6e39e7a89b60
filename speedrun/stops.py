"""Stop signals: SIGTERM and SIGINT end training at a step boundary, with a checkpoint."""

from __future__ import annotations

import signal
import threading
from typing import Any, Self


class StopRequest:
    """Handlers (main thread only, never for an ignored signal) restore the previous one: a second Ctrl-C interrupts
    at once. A signal the loop can no longer act on (after the last step) is re-delivered on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.handled, self._previous = False, {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum
        self._restore([signum])

    def _restore(self, signums: Any = None) -> None:
        for s in list(self._previous if signums is None else signums):
            previous = self._previous.pop(s)
            signal.signal(s, signal.SIG_DFL if previous is None else previous)  # None: set outside Python

    def __exit__(self, *exc: object) -> None:
        self._restore()
        if self.signum is not None and not self.handled and exc[0] is None:
            signal.raise_signal(self.signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def honour(self) -> str:
        """Mark the request handled and say what stopped it (SIGTERM if it came from another rank)."""
        self.handled = True
        self.signum = self.signum or signal.SIGTERM
        return f"stopped by {signal.Signals(self.signum).name}"
