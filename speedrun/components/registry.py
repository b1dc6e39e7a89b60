"""One registry of components: built-ins by lazy "module:Class" entries, custom ones per submission.

Built-ins are imported only when a manifest names them. A submission's ``components.py`` is
imported only by ``speedrun run`` (never by validate, verify or leaderboard); for those, the
names it defines are read statically with ``ast``, so untrusted code never executes.
"""

from __future__ import annotations

import ast
import importlib
import sys
import types
from pathlib import Path

from speedrun.components.base import Component, Params
from speedrun.errors import SpeedrunError

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
        if not (isinstance(cls, type) and issubclass(cls, Component)):
            raise SpeedrunError(f"{origin or cls!r}: a component must subclass speedrun.components.Component")
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
        if name in self._classes:
            return self._classes[name]
        if name not in self._lazy:
            raise SpeedrunError(f"unknown component '{name}'; known: {self.names() or 'none'}")
        module_name, _, attr = self._lazy[name].partition(":")
        cls = getattr(importlib.import_module(module_name), attr)
        self._classes[name] = cls
        return cls

    def load_submission_components(self, path: Path) -> list[str]:
        """Import a submission's ``components.py`` and register every Component subclass it defines.

        This executes submission code: only ``speedrun run`` calls it.
        """
        module_name = f"speedrun_submission_{path.parent.name.replace('-', '_')}"
        module = types.ModuleType(module_name)
        module.__file__ = str(path)
        sys.modules[module_name] = module
        try:
            # Compiled from the source text, the file that provenance hashes: an import would run a
            # bytecode file from __pycache__ instead if one claims to match (provenance skips caches).
            code = compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
            exec(code, module.__dict__)
        except Exception as exc:
            raise SpeedrunError(f"{path}: importing it raised {type(exc).__name__}: {exc}") from exc
        added = []
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Component) and obj.__module__ == module_name:
                self.register(obj, origin=f"{path}:{obj.__qualname__}")
                added.append(obj.name)
        return added


def name_taken(origin: str, name: str) -> SpeedrunError:
    """The collision error, shared by registering at run time and by the static read of validate."""
    return SpeedrunError(
        f"{origin}: component name '{name}' is already registered (built-in or defined twice); pick another name"
    )


def declared_component_names(path: Path) -> list[str]:
    """Names of components a ``components.py`` defines, read with ``ast`` (no code runs).

    As at import, a component is a class of the module's top level that subclasses ``Component``:
    one whose bases name ``Component`` (under any name it was imported as), a built-in component
    class, or a component class defined above it; its name is a string literal assigned to
    ``name`` in its body. Two classes with one name are refused here, as
    ``load_submission_components`` would refuse them at run time, so that ``speedrun validate``
    catches it before a run.
    """
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        where = f"line {exc.lineno}: " if exc.lineno else ""  # None for a file holding a NUL byte
        raise SpeedrunError(f"{path}: not valid Python ({where}{exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpeedrunError(f"{path}: cannot read ({exc})") from None
    except (RecursionError, MemoryError):
        # The parser recurses per nesting level; an untrusted file may nest past the stack.
        raise SpeedrunError(f"{path}: nested too deeply for Python to parse") from None
    component_classes = {Component.__name__} | {entry.partition(":")[2] for entry in BUILTIN.values()}
    bases = set(component_classes)  # the names that stand for a component class in this file
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("speedrun"):
            bases |= {alias.asname or alias.name for alias in node.names if alias.name in component_classes}
    names = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef) or not any(_base_name(b) in bases for b in node.bases):
            continue
        bases.add(node.name)
        for stmt in node.body:
            if isinstance(stmt, ast.Assign):
                targets = stmt.targets
            else:
                targets = [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
            value = getattr(stmt, "value", None)
            names_it = any(isinstance(t, ast.Name) and t.id == "name" for t in targets)
            if names_it and isinstance(value, ast.Constant) and isinstance(value.value, str):
                if value.value in names:
                    raise name_taken(f"{path}:{node.name}", value.value)
                names.append(value.value)
    return names


def _base_name(node: ast.expr) -> str | None:
    """``Component`` for a base written ``Component`` or ``module.Component``; None for other forms."""
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else None
