"""fileio: an atomic write is durable once it returns, and a failed one leaves the old file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from speedrun.data.shards import write_shard
from speedrun.errors import SpeedrunError
from speedrun.fileio import atomic_write_text


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Path]]:
    """Each os.fsync from now on, as (kind, path): "file" or "folder", and what the descriptor is."""
    seen: list[tuple[str, Path]] = []
    real = os.fsync

    def spy(fd: int) -> None:
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        seen.append((kind, Path(os.readlink(f"/proc/self/fd/{fd}"))))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def test_atomic_write_syncs_the_folder_after_the_rename(tmp_path: Path, fsyncs) -> None:
    # Without the folder's fsync a power cut can lose the rename: the file would be back to its old
    # content (or gone) although the write had returned.
    target = tmp_path / "results" / "seed0.json"
    atomic_write_text(target, "{}")
    assert [kind for kind, _ in fsyncs] == ["file", "folder"]
    assert fsyncs[1][1] == target.parent
    assert target.read_text() == "{}" and sorted(p.name for p in target.parent.iterdir()) == ["seed0.json"]


def test_a_failed_atomic_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")

    def full(*_a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SpeedrunError, match=f"{target}: cannot write it \\(No space left on device\\)"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_written_shard_is_synced_into_its_split_folder(tmp_path: Path, fsyncs) -> None:
    write_shard(tmp_path / "train", "shard-00000", 0, {"index": np.arange(3)}, {"captions": ["a", "b", "c"]})
    assert fsyncs[-1] == ("folder", tmp_path / "train")
    assert (tmp_path / "train" / "shard-00000" / "shard.json").is_file()


@pytest.mark.parametrize(("errno_", "message"), [(22, None), (5, "written, but its folder could not be synced")])
def test_a_folder_that_cannot_be_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, errno_: int, message):
    # EINVAL: the filesystem cannot sync a folder (some network ones), so the write stands as it is.
    # EIO: the file is in place but may not survive a power cut; the message must not say "unchanged".
    real = os.fsync

    def folder_fails(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno_, os.strerror(errno_))
        real(fd)

    monkeypatch.setattr(os, "fsync", folder_fails)
    target = tmp_path / "a.json"
    if message is None:
        atomic_write_text(target, "new")
    else:
        with pytest.raises(SpeedrunError, match=f"{target}: {message}") as info:
            atomic_write_text(target, "new")
        assert "unchanged" not in str(info.value)
    assert target.read_text() == "new"
