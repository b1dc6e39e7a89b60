"""One registry of components: built-ins by lazy "module:Class" entries, custom ones per submission.

Only ``speedrun run`` imports a submission's ``components.py``; validate, verify and the leaderboard
read its names with ``ast``, so untrusted code never executes there."""

from __future__ import annotations

import ast
import importlib
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING

from speedrun.errors import SpeedrunError

if TYPE_CHECKING:
    from speedrun.protocol import Component

# name -> "module:Class"; the techniques of ../shared/REFERENCE.md section 4 register here.
BUILTIN: dict[str, str] = {
    "repa": "speedrun.components.repa:REPA",
    "irepa": "speedrun.components.irepa:IREPA",
    "tread": "speedrun.components.tread:TREAD",
    "contrastive-fm": "speedrun.components.contrastive_fm:ContrastiveFM",
    "xpred": "speedrun.components.xpred:XPrediction",
}


class Registry:
    """Maps manifest names to Component classes, with collision and type errors."""

    def __init__(self, lazy: dict[str, str] | None = None) -> None:
        self._lazy = dict(BUILTIN if lazy is None else lazy)
        self._classes: dict[str, type[Component]] = {}

    def names(self) -> list[str]:
        return sorted(set(self._lazy) | set(self._classes))

    def __contains__(self, name: str) -> bool:
        return name in self._lazy or name in self._classes

    def register(self, cls: type[Component], origin: str = "") -> type[Component]:
        from speedrun.protocol import Params

        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise SpeedrunError(f"{origin or cls.__qualname__}: component class sets no 'name'")
        if not (isinstance(cls.Params, type) and issubclass(cls.Params, Params)):
            raise SpeedrunError(f"{origin or name}: Params must subclass speedrun.components.Params")
        if name in self:
            raise name_taken(origin or cls.__qualname__, name)
        self._classes[name] = cls
        return cls

    def get(self, name: str) -> type[Component]:
        if name not in self._classes:
            if name not in self._lazy:
                raise SpeedrunError(f"unknown component '{name}'; known: {self.names() or 'none'}")
            module_name, _, attr = self._lazy[name].partition(":")
            self._classes[name] = getattr(importlib.import_module(module_name), attr)
        return self._classes[name]

    def load_submission_components(self, path: Path) -> list[str]:
        """Import a submission's ``components.py`` (running its code) and register its Component classes."""
        from speedrun.protocol import Component

        module_name = f"speedrun_submission_{path.parent.name.replace('-', '_')}"
        sys.modules[module_name] = module = types.ModuleType(module_name)
        module.__file__ = str(path)
        try:
            # Compiled from the source text, the file that provenance hashes: an import would run a
            # bytecode file from __pycache__ instead if one claims to match (provenance skips caches).
            exec(compile(path.read_bytes(), str(path), "exec", dont_inherit=True), module.__dict__)
        except Exception as exc:
            raise SpeedrunError(f"{path}: importing it raised {type(exc).__name__}: {exc}") from exc
        added = []
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Component) and obj.__module__ == module_name:
                self.register(obj, origin=f"{path}:{obj.__qualname__}")
                added.append(obj.name)
        return added


def name_taken(origin: str, name: str) -> SpeedrunError:
    return SpeedrunError(f"{origin}: component name '{name}' is already registered (built-in or defined twice)")


def declared_component_names(path: Path) -> list[str]:
    """Names of components a ``components.py`` defines, read with ``ast`` (no code runs): top-level classes
    based on ``Component`` (as imported), a built-in or a class above, naming themselves ``name = "..."``."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        where = f"line {exc.lineno}: " if exc.lineno else ""  # None for a file holding a NUL byte
        raise SpeedrunError(f"{path}: not valid Python ({where}{exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpeedrunError(f"{path}: cannot read ({exc})") from None
    except (RecursionError, MemoryError):  # the parser recurses per nesting level
        raise SpeedrunError(f"{path}: nested too deeply for Python to parse") from None
    component_classes = {"Component"} | {entry.partition(":")[2] for entry in BUILTIN.values()}
    bases = set(component_classes)  # the names that stand for a component class in this file
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("speedrun"):
            bases |= {alias.asname or alias.name for alias in node.names if alias.name in component_classes}
    names = []
    for node in [n for n in tree.body if isinstance(n, ast.ClassDef)]:
        # A base written ``Component`` or ``module.Component``.
        if bases.isdisjoint(b.id if isinstance(b, ast.Name) else getattr(b, "attr", None) for b in node.bases):
            continue
        bases.add(node.name)
        for stmt in [s for s in node.body if isinstance(s, (ast.Assign, ast.AnnAssign))]:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            value = stmt.value.value if isinstance(stmt.value, ast.Constant) else None
            if isinstance(value, str) and any(isinstance(t, ast.Name) and t.id == "name" for t in targets):
                if value in names:
                    raise name_taken(f"{path}:{node.name}", value)
                names.append(value)
    return names
