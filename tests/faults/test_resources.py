"""Resource limits: a full disk mid-write and out-of-memory at the track's batch give one clear message,
keep the last good checkpoint intact, and the run resumes to the uninterrupted numbers."""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path

import pytest
import torch
from fault_helpers import (
    POISON,
    copy_submission,
    log_rows,
    small_track,
    snapshot,
    train_in_process,
    write_submission,
)
from typer.testing import CliRunner

import speedrun.checkpoint
import speedrun.fileio
from speedrun.checkpoint import latest_checkpoint, read_meta
from speedrun.cli import app
from speedrun.errors import SpeedrunError
from speedrun.model import PRXDenoiser

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def half_then_full(write):
    """Wrap a writer ``write(obj, path)`` so it writes half the bytes to ``path`` then fails with ENOSPC."""

    def failing(obj, path, *args, **kwargs):
        write(obj, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    return failing


def failing_from_step(monkeypatch, target: str, step: int) -> None:
    """Make one checkpoint writer fail with ENOSPC for checkpoints from ``step`` on."""
    marker = f"step-{step:08d}"

    def applies(path) -> bool:
        return marker in str(path)

    if target == "model":
        real = speedrun.checkpoint.save_file
        fail = half_then_full(real)
        monkeypatch.setattr(
            speedrun.checkpoint, "save_file", lambda t, p, *a, **k: (fail if applies(p) else real)(t, p, *a, **k)
        )
    elif target == "optimizer":
        real = torch.save
        fail = half_then_full(real)
        monkeypatch.setattr(torch, "save", lambda o, p, *a, **k: (fail if applies(p) else real)(o, p, *a, **k))
    else:  # meta.json, through the atomic write helper
        real = speedrun.fileio.write_durably

        def write_durably(path, write):
            if applies(path) and "meta.json" in str(path):
                buffer = io.BytesIO()
                write(buffer)
                path.write_bytes(buffer.getvalue()[:10])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return real(path, write)

        monkeypatch.setattr(speedrun.fileio, "write_durably", write_durably)


@pytest.mark.parametrize("target", ["model", "optimizer", "meta"])
def test_disk_full_while_checkpointing_keeps_last_good_and_resumes(smoke_data_root, small_reference, tmp_path,
                                                                   monkeypatch, target):
    track = small_track()
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    with monkeypatch.context() as m:
        failing_from_step(m, target, 4)
        with pytest.raises(SpeedrunError) as err:
            train_in_process(track, smoke_data_root, run_dir)
    text = str(err.value)
    assert "No space left on device" in text and str(ckpts / "step-00000004") in text, text
    resumes = f"run the same command again to resume from the last good checkpoint {ckpts / 'step-00000002'}"
    assert f"free disk space), then {resumes}" in text, text
    assert not list(ckpts.glob(".*")) and not (ckpts / "step-00000004").exists(), "partial checkpoint removed"
    assert latest_checkpoint(ckpts).name == "step-00000002"
    read_meta(ckpts / "step-00000002")  # every file still matches its hash
    _, summary = train_in_process(track, smoke_data_root, run_dir)
    assert summary.status == "ok" and log_rows(run_dir) == log_rows(small_reference)


def invoke_with_a_full_disk(monkeypatch, args: list[str], name: str):
    """The CLI result of ``speedrun <args>`` when every write of a file called ``name`` puts half its
    bytes on disk and then fails with ENOSPC."""
    real = speedrun.fileio.write_durably

    def write_durably(path, write):
        if path.name.startswith(f".{name}.tmp-"):
            buffer = io.BytesIO()
            write(buffer)
            path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, write)

    with monkeypatch.context() as m:
        m.setattr(speedrun.fileio, "write_durably", write_durably)
        return CliRunner().invoke(app, args)


@pytest.mark.parametrize("resume", [True, False])
def test_disk_full_while_writing_results_via_cli(smoke_data_root, tmp_path, monkeypatch, resume):
    """`speedrun run`: the results write fails (ENOSPC, half written): exit 2, one line, no file, no
    temporary left; the same command afterwards writes it. After a --no-resume run, the message says
    to drop the flag: with it, the seed would train again from step 0."""
    sub = write_submission(tmp_path, "poison", [{"name": "poison"}], POISON)  # diverges: no evaluation
    results = sub / "results" / "smoke" / "seed0.json"
    args = ["run", str(sub), "--device", "cpu", "--data-dir", str(smoke_data_root),
            "--runs-dir", str(tmp_path / "runs")]
    failed = invoke_with_a_full_disk(monkeypatch, args + ([] if resume else ["--no-resume"]), results.name)
    assert failed.exit_code == 2 and isinstance(failed.exception, SystemExit), failed.output
    assert "Traceback" not in failed.output
    assert f"{results}: cannot write it (No space left on device); the file is unchanged" in failed.output
    dropped = "Seed 0 is trained: run seed 0 again without --no-resume (--seed 0) to evaluate and record"
    assert (dropped in " ".join(failed.output.split())) is not resume, failed.output
    assert not results.parent.exists() or not list(results.parent.iterdir())
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert results.is_file()


def test_disk_full_while_writing_the_sample_grid_via_cli(
    reference_run, smoke_data_root, fault_cache, tmp_path, monkeypatch
):
    """The grid is written atomically before the results file (whose presence marks the seed done):
    a failed write leaves neither, and the same command afterwards writes both, the grid whole. (The
    reference run's trained and evaluated folder makes the command only record.)"""
    sub = tmp_path / "baseline"
    shutil.copytree(reference_run["results"].parents[2], sub, ignore=shutil.ignore_patterns("results"))
    run_dir = tmp_path / "runs" / "baseline" / "smoke" / "seed0"
    shutil.copytree(reference_run["run_dir"], run_dir)
    results = sub / "results" / "smoke" / "seed0.json"
    monkeypatch.setenv("SPEEDRUN_CACHE_DIR", str(fault_cache))
    args = ["run", str(sub), "--track", "smoke", "--device", "cpu", "--data-dir", str(smoke_data_root),
            "--runs-dir", str(tmp_path / "runs")]
    failed = invoke_with_a_full_disk(monkeypatch, args, "seed0.png")
    assert failed.exit_code == 2 and isinstance(failed.exception, SystemExit), failed.output
    assert f"{results.with_suffix('.png')}: cannot write it (No space left on device)" in failed.output
    assert not list(results.parent.iterdir())
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert results.is_file()
    assert results.with_suffix(".png").read_bytes() == reference_run["results"].with_suffix(".png").read_bytes()


def oom_from_step(monkeypatch, step: int) -> None:
    real = PRXDenoiser.forward

    def forward(self, *args, state=None, **kwargs):
        if state is not None and state.training and state.step >= step:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, *args, state=state, **kwargs)

    monkeypatch.setattr(PRXDenoiser, "forward", forward)


def test_out_of_memory_keeps_last_checkpoint_and_resumes(smoke_data_root, small_reference, tmp_path, monkeypatch):
    track = small_track()
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    with monkeypatch.context() as m:
        oom_from_step(m, 3)
        with pytest.raises(SpeedrunError) as err:
            train_in_process(track, smoke_data_root, run_dir)
    text = str(err.value)
    assert "out of memory on cpu at the track's global batch 8 (8 per process)" in text, text
    assert "Tried to allocate 20.00 GiB" in text and "--nproc" in text
    assert f"resume from the last good checkpoint {ckpts / 'step-00000002'}" in text, text
    before = snapshot(ckpts)
    _, summary = train_in_process(track, smoke_data_root, run_dir)
    assert summary.status == "ok" and log_rows(run_dir) == log_rows(small_reference)
    assert {k: v for k, v in snapshot(ckpts).items() if k.startswith("step-00000002/")} == {
        k: v for k, v in before.items() if k.startswith("step-00000002/")
    }


def test_a_run_started_over_is_told_to_drop_no_resume_to_resume(smoke_data_root, small_reference, tmp_path,
                                                                monkeypatch):
    """The same command with --no-resume would delete the checkpoint the advice names."""
    track = small_track()
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    again = "run seed 0 again without --no-resume (--seed 0)"
    with monkeypatch.context() as m:
        failing_from_step(m, "model", 4)
        with pytest.raises(SpeedrunError) as full:
            train_in_process(track, smoke_data_root, run_dir, resume=False)
    resumes = f"{again} to resume from the last good checkpoint {ckpts / 'step-00000002'}"
    assert str(full.value).endswith(f"free disk space), then {resumes}"), full.value
    (ckpts / "step-00000002" / "abandoned").write_text("")  # gone once the next --no-resume run starts
    real = speedrun.fileio.write_durably

    def latest_on_a_full_disk(path, write):
        if path.name.startswith(".latest.tmp-") and (ckpts / "step-00000004").exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, write)

    with monkeypatch.context() as m:
        m.setattr(speedrun.fileio, "write_durably", latest_on_a_full_disk)
        with pytest.raises(SpeedrunError) as pointer:
            train_in_process(track, smoke_data_root, run_dir, resume=False)
    assert not (ckpts / "step-00000002" / "abandoned").exists()
    assert f"{ckpts / 'latest'}: cannot write it (No space left on device)" in str(pointer.value)
    assert str(pointer.value).endswith(f"free disk space), then {resumes}"), pointer.value
    with monkeypatch.context() as m:
        oom_from_step(m, 3)
        with pytest.raises(SpeedrunError) as oom:
            train_in_process(track, smoke_data_root, run_dir, resume=False)
    assert str(oom.value).endswith(resumes), oom.value
    _, summary = train_in_process(track, smoke_data_root, run_dir)
    assert summary.status == "ok" and log_rows(run_dir) == log_rows(small_reference)


def test_out_of_memory_via_cli_is_one_message(smoke_data_root, tmp_path, monkeypatch):
    sub = copy_submission(tmp_path)
    oom_from_step(monkeypatch, 0)
    result = CliRunner().invoke(app, ["run", str(sub), "--track", "smoke", "--device", "cpu",
                                      "--data-dir", str(smoke_data_root), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "error: out of memory on cpu" in result.output and "Traceback" not in result.output
    assert "no checkpoint yet" in result.output
    assert not (sub / "results").exists()
