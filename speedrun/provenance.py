"""Provenance: which code made a result (harness and submission file hashes), and on what hardware.

The harness hash covers only the modules training and evaluation import: editing the CLI stales no result."""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import hashlib
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from speedrun.fileio import sha256_file

if TYPE_CHECKING:
    import torch

    from speedrun.results import Hardware, Software

PACKAGE = Path(__file__).resolve().parent
# The processes whose code decides a result's numbers: training (one seed) and evaluation.
ENTRY_POINTS = ("speedrun.worker", "speedrun.eval.run")
# A registry entry naming a class to import lazily, "speedrun.components.repa:REPA".
LAZY_IMPORT = re.compile(r"speedrun(\.\w+)+:\w+")


def harness_files(package: Path = PACKAGE) -> list[Path]:
    """The source files of ``package`` that the entry points import anywhere, transitively, with their
    packages and the lazy "module:Class" registry entries, sorted."""
    todo, seen = list(ENTRY_POINTS), set()
    while todo:
        parts = todo.pop().split(".")
        base = package.joinpath(*parts[1:])
        files = (base / "__init__.py", base.with_suffix(".py")) if parts[0] == package.name else ()
        path = next((p for p in files if p.is_file()), None)
        if path is None or path in seen:
            continue
        seen.add(path)
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # its packages' __init__
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package upwards
                    anchor = parts if is_package else parts[:-1]
                    base = ".".join([*anchor[: len(anchor) - node.level + 1], *([base] if base else [])])
                todo += [base, *(f"{base}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and LAZY_IMPORT.fullmatch(node.value):
                todo.append(node.value.partition(":")[0])
    return sorted(seen)


def harness_sha256(package: Path = PACKAGE) -> str:
    """sha256 over (relative path, file sha256) of ``harness_files``."""
    h = hashlib.sha256()
    for p in harness_files(package):
        h.update(f"{p.relative_to(package).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


# Editor and file-browser litter: hashing it would stale results when a swap file comes or goes.
_CACHE_FOLDERS = frozenset({"__pycache__", ".ipynb_checkpoints", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
_JUNK_FILES = (".DS_Store", "._*", "Thumbs.db", "desktop.ini", ".*.sw?", "*~", ".#*", "#*#")


def submission_file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file in the submission folder except its results, caches and editor litter."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        left_out = rel.parts[0] == "results" or not _CACHE_FOLDERS.isdisjoint(rel.parts)
        if p.is_file() and not left_out and not any(fnmatch.fnmatchcase(rel.name, j) for j in _JUNK_FILES):
            out[rel.as_posix()] = sha256_file(p)
    return out


def code_record(folder: Path, harness: str | None = None) -> dict[str, Any]:
    """The code that trains a submission: the harness hash (``harness`` if known) and every submission file's."""
    return {"harness_sha256": harness or harness_sha256(), "submission_files": submission_file_hashes(folder)}


class CodeChange(NamedTuple):
    """One difference between two code records; ``str()`` says it ("components.py changed")."""

    file: str | None  # a submission file's path; None for the harness
    how: Literal["changed", "added", "removed"]

    def __str__(self) -> str:
        return f"{self.file or 'the harness code that trains and evaluates (speedrun/)'} {self.how}"


def code_changes(recorded: dict[str, Any], now: dict[str, Any]) -> list[CodeChange]:
    """How ``now`` differs from ``recorded`` (a missing key is empty): files changed, added, removed; the harness."""
    then, files = recorded.get("submission_files", {}), now.get("submission_files", {})
    out = [CodeChange(f, "changed") for f in sorted(then.keys() & files.keys()) if then[f] != files[f]]
    out += [CodeChange(f, "added") for f in sorted(files.keys() - then.keys())]
    out += [CodeChange(f, "removed") for f in sorted(then.keys() - files.keys())]
    if recorded.get("harness_sha256") != now.get("harness_sha256"):
        out.append(CodeChange(None, "changed"))
    return out


def hardware_info(device: torch.device, world_size: int, per_node: int) -> Hardware:
    """What ran: ``world_size`` processes in all, ``per_node`` of them on this node."""
    import torch

    from speedrun.results import Hardware

    names, driver = [], None
    if device.type == "cuda":
        # The cards this node's processes use (local ranks 0..n-1), not every card the machine shows.
        names = [torch.cuda.get_device_name(i) for i in range(min(torch.cuda.device_count(), per_node))]
        with contextlib.suppress(Exception):  # nvidia-smi is optional; the device names still identify the card
            driver = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10,
            ).stdout.strip().splitlines()[0]  # fmt: skip
    cpu = cpu_model()
    cpu_count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return Hardware(device_type=device.type, device_names=names or [cpu], device_count=world_size, driver=driver,
                    cpu=cpu, cpu_count=cpu_count)  # fmt: skip


def cpu_model() -> str:
    """The CPU's name ("AMD EPYC 7R13 Processor (x86_64)"), which ``platform.processor()`` lacks on Linux."""
    arch = platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:  # not Linux: the OSError leaves it to the platform module
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return f"{value.strip()} ({arch})"
    return platform.processor() or arch


def software_info() -> Software:
    import torch

    from speedrun.results import Software

    pkgs = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    try:
        from triton import __version__ as triton_version
    except ImportError:
        triton_version = None
    packages_sha256 = hashlib.sha256("\n".join(pkgs).encode()).hexdigest()
    return Software(python=sys.version.split()[0], torch=torch.__version__, triton=triton_version,
                    cuda=torch.version.cuda, packages_sha256=packages_sha256)  # fmt: skip


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
