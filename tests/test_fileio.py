"""fileio: an atomic write is durable once it returns, and a failed one leaves the old file."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from speedrun.data.shards import read_shard_entry, write_shard
from speedrun.errors import NotSynced, SpeedrunError
from speedrun.fileio import atomic_write_text


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Path, list[str]]]:
    """Each os.fsync from now on, as (kind, path, names): "file" or "folder", what the descriptor is
    (read from Linux's /proc), and for a folder the names in it at that moment."""
    seen: list[tuple[str, Path, list[str]]] = []
    real = os.fsync

    def spy(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            seen.append(("folder", path, sorted(p.name for p in path.iterdir())))
        else:
            seen.append(("file", path, []))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def test_atomic_write_syncs_the_folder_after_the_rename(tmp_path: Path, fsyncs) -> None:
    # Without the folder's fsync a power cut can lose the rename: the file would be back to its old
    # content (or gone) although the write had returned.
    target = tmp_path / "results" / "seed0.json"
    atomic_write_text(target, "{}")
    assert [kind for kind, _, _ in fsyncs] == ["file", "folder"]
    assert fsyncs[1][1:] == (target.parent, ["seed0.json"]), "synced after the rename: no temporary name left"
    assert target.read_text() == "{}"


def test_a_failed_atomic_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")

    def full(*_a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SpeedrunError, match=f"{target}: cannot write it \\(No space left on device\\)"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


WRITE_PAST_THE_LIMIT = """
import resource, sys
from pathlib import Path
from speedrun.errors import SpeedrunError
from speedrun.fileio import atomic_write_text

# CPython ignores SIGXFSZ: a write past the limit fails with EFBIG instead of killing the process.
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    atomic_write_text(Path(sys.argv[1]), "x" * 8192)
except SpeedrunError as exc:
    print(exc)
"""


def test_an_atomic_write_past_the_file_size_limit_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "seed0.json"
    target.write_text("old")
    args = [sys.executable, "-c", WRITE_PAST_THE_LIMIT, str(target)]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{target}: cannot write it (File too large); the file is unchanged\n"
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["seed0.json"]


def test_an_atomic_write_below_a_file_names_the_file_in_the_way(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    for target in (blocker / "a.json", blocker / "sub" / "a.json"):
        with pytest.raises(SpeedrunError) as info:
            atomic_write_text(target, "{}")
        assert str(info.value).startswith(f"{target}: cannot write it: part of its folder's path is a file (")
    assert [p.name for p in tmp_path.iterdir()] == ["blocker"] and blocker.read_text() == ""


def test_an_atomic_write_whose_temporary_name_is_too_long_is_its_own_error(tmp_path: Path) -> None:
    """The temporary file's longer name fails to open; its clean-up must not raise over that error."""
    target = tmp_path / ("b" * 250)
    with pytest.raises(SpeedrunError, match=re.escape(f"{target}: cannot write it (File name too long)")):
        atomic_write_text(target, "{}")
    assert list(tmp_path.iterdir()) == []


def test_a_written_shard_is_synced_into_its_split_folder(tmp_path: Path, fsyncs) -> None:
    write_shard(tmp_path / "train", "shard-00000", 0, {"index": np.arange(3)}, {"captions": ["a", "b", "c"]})
    partial, split = fsyncs[-2], fsyncs[-1]
    # the shard's own folder before it takes its name, then the split folder after
    assert partial[0] == "folder" and partial[1].name.startswith(".shard-00000.partial-")
    assert partial[2] == ["captions.json", "index.npy", "shard.json"]
    assert split == ("folder", tmp_path / "train", ["shard-00000"])


def test_a_shard_that_cannot_be_written_is_one_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SpeedrunError) as info:
        write_shard(tmp_path / "train", "shard-00000", 0, {"index": np.arange(3)}, {"captions": ["a", "b", "c"]})
    assert str(info.value).startswith(f"{tmp_path / 'train' / 'shard-00000'}: cannot write this shard (No space left")
    assert "run prepare again" in str(info.value)
    assert list((tmp_path / "train").iterdir()) == [], "the partial copy is removed"


def test_a_shard_whose_split_folder_cannot_be_synced_is_not_called_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last sync, of the split folder after the rename, fails: the shard is complete and in place,
    and the message says so rather than "its partial copy was removed"."""
    split = tmp_path / "train"
    real_fsync = os.fsync

    def fail_on_the_split_folder(fd):
        if os.path.samefile(f"/proc/self/fd/{fd}", split):
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fail_on_the_split_folder)
    with pytest.raises(SpeedrunError) as info:
        write_shard(split, "shard-00000", 0, {"index": np.arange(3)}, {"captions": ["a", "b", "c"]})
    message = str(info.value)
    assert message.startswith(f"{split / 'shard-00000'}: written, but its folder could not be synced to disk (Input")
    # A fact, not "its partial copy was removed"; advice.explain adds "check the disk, then ..." (test_advice).
    assert "removed" not in message and isinstance(info.value, NotSynced)
    assert [p.name for p in split.iterdir()] == ["shard-00000"]
    assert read_shard_entry(split, "shard-00000").count == 3


def test_a_folder_that_may_not_be_read_is_not_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A folder with write but no read permission (-wx) takes the file; opening it to sync fails.
    real_open = os.open

    def no_read(path, flags, *args):
        if flags & os.O_DIRECTORY:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_read)
    atomic_write_text(tmp_path / "a.json", "new")
    assert (tmp_path / "a.json").read_text() == "new"


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
