"""The harness hash covers the code that trains and evaluates, and nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from speedrun.provenance import PACKAGE, harness_files, harness_sha256


@pytest.fixture
def package(tmp_path: Path) -> Path:
    copy = tmp_path / "speedrun"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.mark.parametrize(
    "edited, counts",
    [
        ("leaderboard.py", False),
        ("verify.py", False),
        ("cli.py", False),
        ("NOTES.md", False),  # a doc beside the code
        ("model/prx.py", True),
        ("components/repa.py", True),  # a technique the registry imports by name only
        ("eval/fid.py", True),
        ("train.py", True),
    ],
)
def test_only_code_that_trains_or_evaluates_changes_the_hash(package: Path, edited: str, counts: bool) -> None:
    before = harness_sha256(package)
    path = package / edited
    path.write_text((path.read_text() if path.exists() else "") + "# an edit\n")
    assert (harness_sha256(package) != before) == counts


def test_harness_files_follow_the_imports_of_training_and_evaluation() -> None:
    names = {p.relative_to(PACKAGE).as_posix() for p in harness_files()}
    assert {"worker.py", "eval/run.py", "components/repa.py", "protocol.py", "model/prx.py"} <= names
    assert not {"leaderboard.py", "verify.py", "cli.py"} & names


def test_a_relative_import_joins_the_harness(package: Path) -> None:
    assert package / "leaderboard.py" not in harness_files(package)
    worker = package / "worker.py"
    worker.write_text(worker.read_text() + "\n\ndef _board():\n    from . import leaderboard\n")
    assert package / "leaderboard.py" in harness_files(package)
