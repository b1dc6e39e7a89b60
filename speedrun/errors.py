"""The exceptions for what the user must fix, printed by the CLI as one paragraph without a traceback
(anything else is a harness bug and keeps its traceback). They carry facts; :mod:`speedrun.advice` adds remedies."""

from __future__ import annotations

import reprlib


class SpeedrunError(Exception):
    """A clear, user-facing error. The message names the file, field or value at fault."""


class TrainingInterrupted(SpeedrunError):
    """SIGTERM/SIGINT stopped training at a step boundary, after a checkpoint; commands exit ``128 + signum``."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class WriteFailed(SpeedrunError):
    """``path`` could not be written (``reason``, e.g. the disk is full); ``state`` says what is on disk."""

    def __init__(self, path: object, reason: str, state: str = "the file is unchanged") -> None:
        super().__init__(f"{path}: cannot write it ({reason}); {state}")
        self.path, self.reason = path, reason


class NotSynced(WriteFailed):
    def __init__(self, path: object, reason: str) -> None:
        SpeedrunError.__init__(self, f"{path}: written, but its folder could not be synced to disk ({reason})")
        self.path, self.reason = path, reason


class OutOfMemory(SpeedrunError):
    """Training ran out of device memory at the track's batch."""


# Bounded repr: a value nested 1000 deep must not raise RecursionError while we describe it.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 3, 60, 60, 4, 4


def format_validation_error(source: str, exc: Exception) -> str:
    """One readable paragraph for a pydantic ``ValidationError`` raised while loading ``source``."""
    lines = []
    for err in exc.errors():
        # repr() any key with a newline or control character so the message stays one printable line
        loc = ".".join(str(p) if str(p).isprintable() else repr(p) for p in err.get("loc", ())) or "(top level)"
        msg = err.get("msg", "invalid value")
        if err.get("type") == "value_error" and "error" in err.get("ctx", {}):
            msg = str(err["ctx"]["error"])  # our validator's own words, without pydantic's "Value error, "
        if err.get("type") == "extra_forbidden":
            msg = "unknown field (not part of the schema)"
        value = err.get("input")
        # "missing" and table-level checks get the whole enclosing table as input: not worth showing
        whole_table = isinstance(value, dict) and err.get("type") in ("missing", "value_error")
        lines.append(f"field '{loc}': {msg}" + ("" if whole_table else f" (got {_REPR.repr(value)})"))
    return f"{source}: " + "; ".join(lines)
