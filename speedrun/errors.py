"""The one exception type for user mistakes.

Anything raised as ``SpeedrunError`` is the user's to fix (a bad manifest, a missing file, missing
weights); the CLI prints its message as one paragraph and exits non-zero without a traceback.
Everything else is a bug in the harness and keeps its traceback.
"""

from __future__ import annotations

import reprlib


class SpeedrunError(Exception):
    """A clear, user-facing error. The message names the file, field or value at fault."""


class TrainingInterrupted(SpeedrunError):
    """SIGTERM/SIGINT stopped training at a step boundary, after writing a checkpoint.

    Commands exit ``128 + signum`` (130 for Ctrl-C, 143 for SIGTERM), the shell's convention.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


# Bounded repr: a value nested 1000 deep must not raise RecursionError while we describe it.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 3, 60, 60, 4, 4


def format_validation_error(source: str, exc: Exception) -> str:
    """One readable paragraph for a pydantic ``ValidationError`` raised while loading ``source``."""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return f"{source}: {exc}"
    lines = []
    for err in errors():
        # repr() any key with a newline or control character so the message stays one printable line
        loc = ".".join(str(p) if str(p).isprintable() else repr(p) for p in err.get("loc", ())) or "(top level)"
        msg = err.get("msg", "invalid value")
        if err.get("type") == "value_error" and "error" in err.get("ctx", {}):
            msg = str(err["ctx"]["error"])  # our validator's own words, without pydantic's "Value error, "
        if err.get("type") == "extra_forbidden":
            msg = "unknown field (not part of the schema)"
        value = err.get("input")
        # "missing" and table-level checks get the whole enclosing table as input: not worth showing
        if isinstance(value, dict) and err.get("type") in ("missing", "value_error"):
            lines.append(f"field '{loc}': {msg}")
            continue
        shown = _REPR.repr(value)
        lines.append(f"field '{loc}': {msg} (got {shown})")
    return f"{source}: " + "; ".join(lines)
