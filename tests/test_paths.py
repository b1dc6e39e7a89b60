"""paths: what is at a path, and what stops a folder being created, without Path.exists's blind spots."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import speedrun.paths
from speedrun.paths import lookup, unusable_part

LONG = "a" * 300  # over the 255 bytes ext4, xfs and tmpfs take in one name


def test_lookup_tells_folders_files_and_nothing_apart(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    assert lookup(tmp_path) == "folder"
    assert lookup(tmp_path / "f") == "file"
    assert lookup(tmp_path / "missing") is None
    assert lookup(tmp_path / "f" / "below-a-file") is None


def test_lookup_raises_for_a_name_the_system_refuses(tmp_path: Path) -> None:
    with pytest.raises(OSError) as info:
        lookup(tmp_path / LONG)
    assert info.value.errno == errno.ENAMETOOLONG


@pytest.mark.parametrize("python314", [False, True])
def test_a_name_too_long_is_named(tmp_path: Path, request, python314: bool) -> None:
    if python314:
        request.getfixturevalue("python314_path_checks")
    assert unusable_part(tmp_path / LONG) == f"{tmp_path / LONG} cannot be used (File name too long)"


def test_a_name_too_long_below_a_missing_folder_is_named(tmp_path: Path) -> None:
    # No lookup reaches that name (the lookup of its missing parent fails first): mkdir would.
    target = tmp_path / "new" / LONG / "runs"
    assert unusable_part(target) == f"{tmp_path / 'new' / LONG} cannot be used (File name too long)"
    with pytest.raises(OSError) as made:
        target.mkdir(parents=True)
    assert made.value.errno == errno.ENAMETOOLONG


def test_a_name_of_255_bytes_is_usable(tmp_path: Path) -> None:
    target = tmp_path / "new" / ("é" * 127 + "a")  # 255 bytes in UTF-8, 128 characters
    assert unusable_part(target) is None
    target.mkdir(parents=True)


def test_a_folder_that_may_not_be_searched_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root here, which searches any folder: the kernel's answer is stood in for.
    locked = tmp_path / "locked"
    locked.mkdir()
    real = speedrun.paths.lookup

    def lookup_below_locked(path: Path) -> str | None:
        if locked in Path(path).parents:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path)

    monkeypatch.setattr(speedrun.paths, "lookup", lookup_below_locked)
    problem = f"{locked} cannot be entered (permission denied)"
    assert unusable_part(locked / "runs" / "sub") == problem
    assert unusable_part(locked / "data", write=False) == problem
    assert unusable_part(tmp_path / "elsewhere") is None


def test_a_file_on_the_way_is_named(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    assert unusable_part(tmp_path / "f" / "a" / "b") == f"{tmp_path / 'f'} is a file"
    assert unusable_part(tmp_path / "f") == f"{tmp_path / 'f'} is a file"


def test_a_folder_that_may_not_be_entered_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A data folder is only read, yet it must be entered.
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setattr(speedrun.paths.os, "access", lambda path, mode: Path(path) != data)
    assert unusable_part(data, write=False) == f"{data} cannot be entered (permission denied)"


def test_a_broken_symbolic_link_on_the_way_is_named(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    problem = f"{tmp_path / 'link'} is a broken symbolic link (to {tmp_path / 'gone'})"
    assert unusable_part(tmp_path / "link") == problem
    assert unusable_part(tmp_path / "link" / "runs") == problem
    with pytest.raises(FileExistsError):  # what mkdir would have said
        (tmp_path / "link" / "runs").mkdir(parents=True, exist_ok=True)


def test_a_symbolic_link_loop_is_named(tmp_path: Path, read_only) -> None:
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    loop = f"{tmp_path / 'loop'} cannot be used ({os.strerror(errno.ELOOP)})"
    assert unusable_part(tmp_path / "loop" / "runs") == loop
    # The folder above is looked at all the same: what stops the write there is said first.
    read_only(tmp_path)
    assert unusable_part(tmp_path / "loop" / "runs") == f"{tmp_path} cannot be written (permission denied)"


def test_only_names_still_to_be_created_are_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Existing names were accepted by their filesystem, which may count characters, not bytes (APFS).
    monkeypatch.setattr(speedrun.paths, "NAME_MAX", 10)
    existing = tmp_path / "an-existing-long-name"
    existing.mkdir()
    assert unusable_part(existing / "short") is None
    assert unusable_part(existing / "a-new-long-name" / "x") == (
        f"{existing / 'a-new-long-name'} cannot be used (File name too long)"
    )
