"""The one exception type for user mistakes.

Anything raised as ``SpeedrunError`` is the user's to fix (a bad manifest, a missing file, missing
weights); the CLI prints its message as one paragraph and exits non-zero without a traceback.
Everything else is a bug in the harness and keeps its traceback.
"""

from __future__ import annotations


class SpeedrunError(Exception):
    """A clear, user-facing error. The message names the file, field or value at fault."""


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
        if err.get("type") == "extra_forbidden":
            msg = "unknown field (not part of the schema)"
        value = err.get("input")
        # "missing" and table-level checks get the whole enclosing table as input: not worth showing
        if isinstance(value, dict) and err.get("type") in ("missing", "value_error"):
            lines.append(f"field '{loc}': {msg}")
            continue
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"field '{loc}': {msg} (got {shown})")
    return f"{source}: " + "; ".join(lines)
