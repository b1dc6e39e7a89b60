"""The import graph's layers: verify and the leaderboard stay light, the protocol is a leaf, the
kernels know nothing of the model, and the trainer knows the protocol, never a technique."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "speedrun"


def imports(path: Path, *, type_checking: bool = True) -> list[str]:
    """Every module ``path`` imports, at the top or inside a function, absolute ("speedrun.model",
    "speedrun.model.build_model" for ``from speedrun.model import build_model``); without the imports
    under ``if TYPE_CHECKING:`` when ``type_checking`` is False."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    skipped: set[ast.AST] = set()
    if not type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped |= {n for stmt in node.body for n in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return found


def test_the_import_walk_sees_imports_inside_functions_and_under_type_checking() -> None:
    assert "speedrun.kernels.triton_attention" in imports(PACKAGE / "kernels" / "dispatch.py")  # in a function
    assert "speedrun.flow.Objective" in imports(PACKAGE / "protocol.py")
    assert "speedrun.flow.Objective" not in imports(PACKAGE / "protocol.py", type_checking=False)


@pytest.mark.parametrize("module", ["speedrun.leaderboard", "speedrun.verify"])
def test_verify_and_the_leaderboard_import_neither_torch_nor_a_component(module: str) -> None:
    """Neither runs a model: importing torch (seconds) or a technique would only slow every call."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    loaded = set(json.loads(run.stdout))
    assert module in loaded
    heavy = {"torch", "speedrun.protocol"} | {
        m for m in loaded if m.startswith("speedrun.components.") and m != "speedrun.components.registry"
    }
    assert not heavy & loaded, sorted(heavy & loaded)


def test_the_protocol_is_a_leaf() -> None:
    harness = [m for m in imports(PACKAGE / "protocol.py", type_checking=False) if m.split(".")[0] == "speedrun"]
    assert harness == []


def test_the_kernels_import_nothing_of_the_model() -> None:
    kernels = sorted((PACKAGE / "kernels").glob("*.py"))
    assert kernels
    for path in kernels:
        model = [m for m in imports(path) if m == "speedrun.model" or m.startswith("speedrun.model.")]
        assert model == [], f"{path.name} imports {model}"


def test_the_trainer_imports_the_protocol_never_a_technique() -> None:
    found = imports(PACKAGE / "train.py")
    assert "speedrun.protocol" in found
    assert [m for m in found if m.split(".")[:2] == ["speedrun", "components"]] == []


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_waits_passively_unless_the_user_chose(given: str | None, expected: str) -> None:
    """Set by ``import speedrun``, before torch loads OpenMP (which reads it once): spinning threads beside another
    busy process cut tiny's speed to 4-30% (BENCHMARKS.md). Training and evaluation start as ``-m speedrun...``."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env |= {"OMP_WAIT_POLICY": given} if given else {}
    code = "import os, speedrun.worker; print(os.environ['OMP_WAIT_POLICY'])"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=PACKAGE.parent)
    assert run.stdout.strip() == expected, run.stderr
