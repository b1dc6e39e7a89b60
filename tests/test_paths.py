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


def test_lookup_raises_for_a_name_the_system_refuses(tmp_path: Path, python314_path_checks) -> None:
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
