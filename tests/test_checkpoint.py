"""checkpoint: a seed started over discards its old checkpoints, or says what stopped it."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from speedrun.checkpoint import discard_checkpoints
from speedrun.errors import SpeedrunError


def test_discarding_removes_every_checkpoint_and_nothing_beside(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    (root / "step-00000002").mkdir(parents=True)
    (root / "step-00000002" / "meta.json").write_text("{}")
    (root / "latest").write_text("step-00000002\n")
    (tmp_path / "train.jsonl").write_text("{}\n")
    discard_checkpoints(root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]
    discard_checkpoints(root)  # nothing there: nothing to do


def test_a_checkpoint_that_cannot_be_deleted_is_one_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "checkpoints"
    (root / "step-00000002").mkdir(parents=True)
    busy = root / "step-00000002" / "model.safetensors"

    def refused(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(busy))

    monkeypatch.setattr(shutil, "rmtree", refused)
    with pytest.raises(SpeedrunError) as info:
        discard_checkpoints(root)
    assert str(info.value) == (
        f"{busy}: cannot delete the old checkpoints to start the seed over (Permission denied); "
        f"delete {root} yourself, then run the same command again"
    )


def test_an_entry_vanishing_mid_delete_is_not_taken_for_nothing_to_delete(tmp_path: Path, monkeypatch) -> None:
    # rmtree raises FileNotFoundError for an inner entry another process removed; the rest may remain.
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "latest").write_text("step-00000002\n")

    def vanished(path, *args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(root / "step-00000002"))

    monkeypatch.setattr(shutil, "rmtree", vanished)
    with pytest.raises(SpeedrunError, match="step-00000002: cannot delete the old checkpoints"):
        discard_checkpoints(root)


