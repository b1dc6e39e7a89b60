"""advice: the one layer that turns an error and its context into what to do next."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from speedrun.advice import explain, rerun, resume_from
from speedrun.errors import NotSynced, OutOfMemory, SpeedrunError, WriteFailed


@pytest.mark.parametrize("state", ["none", "two", "pointer to the older", "damaged pointer", "unreadable"])
def test_resume_from_names_what_a_run_would_resume_from(tmp_path: Path, monkeypatch, state: str) -> None:
    """Error messages say how to go on: resume from the checkpoint the trainer would pick, start over
    when there is none, or mend a damaged ``latest`` first (the run would stop on it too)."""
    again = "run seed 3 again without --no-resume (--seed 3)"
    if state != "none":
        for step in (2, 4):
            (tmp_path / f"step-{step:08d}").mkdir()
    if state == "pointer to the older":
        (tmp_path / "latest").write_text("step-00000002\n")
    if state == "damaged pointer":
        (tmp_path / "latest").write_text("step-4\n")
    if state == "unreadable":  # the advice is part of another error's message: it must not raise
        def refuse(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path / "latest"))

        monkeypatch.setattr("speedrun.checkpoint.latest_checkpoint", refuse)
    advice = resume_from(tmp_path, again)
    expected = {
        "none": "run the same command again (no checkpoint yet: it starts over)",
        "two": f"{again} to resume from the last good checkpoint {tmp_path / 'step-00000004'}",
        "pointer to the older": f"{again} to resume from the last good checkpoint {tmp_path / 'step-00000002'}",
        "damaged pointer": f"{again} once this is mended: {tmp_path / 'latest'}: corrupted (it should name a "
        "step-NNNNNNNN directory); delete it to resume from the newest checkpoint directory",
        "unreadable": f"{again} once {tmp_path / 'latest'} can be read (Permission denied)",
    }
    assert advice == expected[state]


def test_rerun_drops_no_resume_for_that_seed_alone() -> None:
    assert rerun(3, True) == "run the same command again"
    assert rerun(3, False) == "run seed 3 again without --no-resume (--seed 3)"


def test_explain_adds_the_remedy_that_fits_the_error() -> None:
    full = WriteFailed("/r/seed0.json", "No space left on device")
    assert explain(full) == (
        "/r/seed0.json: cannot write it (No space left on device); the file is unchanged: fix that "
        "(e.g. free disk space), then run the command again"
    )
    assert explain(full, None).endswith("fix that (e.g. free disk space)")
    assert explain(NotSynced("/d/shard", "Input/output error"), "run prepare again") == (
        "/d/shard: written, but its folder could not be synced to disk (Input/output error); check the disk, "
        "then run prepare again"
    )
    assert explain(OutOfMemory("out of memory on cpu"), "resume").endswith("with more memory; resume")
    assert explain(SpeedrunError("plain")) == "plain"
