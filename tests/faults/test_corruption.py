"""Corruption: truncated or byte-flipped checkpoints, shards, reference statistics and results files
are detected, reported with the path and what to do, and never overwritten."""

from __future__ import annotations

import io
import re
import shutil

import numpy as np
import pytest
from fault_helpers import (
    copy_submission,
    flip_byte,
    log_rows,
    make_result,
    small_track,
    snapshot,
    tmp_repo,
    train_in_process,
    truncate,
)
from rich.console import Console
from typer.testing import CliRunner

from speedrun.cli import app
from speedrun.errors import SpeedrunError
from speedrun.eval.stats import reference_stats
from speedrun.leaderboard import build_board
from speedrun.results import EvalReport, load_result, write_result
from speedrun.run import RunOptions, _read_eval, run_submission
from speedrun.verify import verify_paths


def replace_in(path, old: str, new: str) -> None:
    """An edit that keeps the file valid JSON (only a hash can catch it)."""
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


CHECKPOINT_DAMAGE = {
    "model truncated": (lambda c: truncate(c / "model.safetensors"), "model.safetensors: missing or corrupted"),
    "optimizer byte flipped": (lambda c: flip_byte(c / "optimizer.pt"), "optimizer.pt: missing or corrupted"),
    "rng byte flipped": (lambda c: flip_byte(c / "rng.pt"), "rng.pt: missing or corrupted"),
    "rng deleted": (lambda c: (c / "rng.pt").unlink(), "rng.pt: missing or corrupted"),
    "meta truncated": (lambda c: truncate(c / "meta.json"), "meta.json: corrupted"),
    "meta step edited": (lambda c: replace_in(c / "meta.json", '"step": 4', '"step": 5'), "meta.json: corrupted"),
    "latest pointer garbage": (lambda c: (c.parent / "latest").write_bytes(b"\xff../../etc"), "latest: corrupted"),
}


def test_corrupted_checkpoint_is_reported_untouched_and_earlier_one_resumes(
    smoke_data_root, small_reference, tmp_path
):
    """Each damage to checkpoint 4 stops the resume with a message naming the file and the fix;
    nothing in the run directory changes; following the advice resumes from checkpoint 2 and ends
    with the uninterrupted losses."""
    track = small_track()
    good = tmp_path / "good"
    train_in_process(track, smoke_data_root, good, stop_after=4)
    for label, (damage, message) in CHECKPOINT_DAMAGE.items():
        run_dir = tmp_path / label.replace(" ", "-")
        shutil.copytree(good, run_dir)
        damage(run_dir / "checkpoints" / "step-00000004")
        before = snapshot(run_dir)
        with pytest.raises(SpeedrunError) as err:
            train_in_process(track, smoke_data_root, run_dir)
        text = str(err.value)
        assert message in text and str(run_dir / "checkpoints") in text, (label, text)
        assert re.search(r"delete (it|\S*step-00000004)", text), (label, text)
        assert snapshot(run_dir) == before, f"{label}: a failed resume changed files"
    # Follow the advice of the last case (delete the pointer) and of the others (delete the
    # checkpoint): resume from the newest intact checkpoint and finish exactly as uninterrupted.
    run_dir = tmp_path / "model-truncated"
    shutil.rmtree(run_dir / "checkpoints" / "step-00000004")
    _, summary = train_in_process(track, smoke_data_root, run_dir)
    assert summary.steps == 6 and '"resumed_from": "step-00000002"' in (run_dir / "train.jsonl").read_text()
    assert log_rows(run_dir) == log_rows(small_reference)


def test_eval_of_corrupted_checkpoint_fails_cleanly(smoke_data_root, tmp_path):
    """`speedrun eval` on a byte-flipped checkpoint: exit 2, the path, no traceback, no metrics file."""
    train_in_process(small_track(steps=2), smoke_data_root, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000002"
    flip_byte(ckpt / "model.safetensors")
    before = snapshot(ckpt)
    result = CliRunner().invoke(app, ["eval", str(ckpt), "--track", "smoke", "--device", "cpu",
                                      "--data-dir", str(smoke_data_root)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "model.safetensors: missing or corrupted" in result.output and "Traceback" not in result.output
    assert snapshot(ckpt) == before


@pytest.fixture
def data_copy(smoke_data_root, tmp_path):
    dest = tmp_path / "data"
    shutil.copytree(smoke_data_root, dest)
    return dest


@pytest.mark.parametrize(
    ("damage", "message"),
    [(flip_byte, "does not match the manifest"), (truncate, "the file is truncated or corrupted")],
    ids=["byte-flipped", "truncated"],
)
def test_corrupted_shard_detected_by_prepare_and_run(data_copy, tmp_path, damage, message):
    """A damaged training shard: `speedrun prepare` and `speedrun run` name it and say to prepare
    again; neither rewrites a byte of the dataset nor trains."""
    [shard_file] = list(data_copy.glob("*/train/shard-00000/x.npy"))
    damage(shard_file)
    before = snapshot(data_copy)
    runner = CliRunner()
    prepared = runner.invoke(app, ["prepare", "--track", "smoke", "--data-dir", str(data_copy)])
    assert prepared.exit_code == 2, prepared.output
    assert str(shard_file) in prepared.output and message in prepared.output and "prepare again" in prepared.output
    assert "Traceback" not in prepared.output
    sub = copy_submission(tmp_path)
    ran = runner.invoke(app, ["run", str(sub), "--track", "smoke", "--device", "cpu", "--data-dir", str(data_copy),
                              "--runs-dir", str(tmp_path / "runs")])
    assert ran.exit_code == 2 and str(shard_file) in ran.output, ran.output
    assert snapshot(data_copy) == before and not (tmp_path / "runs").exists()


class FakeExtractor:
    id, dim, weights_sha256 = "fake", 4, "f" * 64

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1)[:, :4].astype(np.float64)


@pytest.mark.parametrize(
    "damage", [flip_byte, truncate, lambda p: p.write_bytes(b"")], ids=["flipped", "truncated", "empty"]
)
def test_corrupted_reference_statistics_detected_not_recomputed(tmp_path, damage):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 4, 4, 3), dtype=np.uint8) for _ in range(2)]
    key = {"metric": "fid", "n": 16}
    reference_stats(images, FakeExtractor(), tmp_path, key, keep_features=True)
    [path] = list(tmp_path.glob("*.npz"))
    damage(path)
    before = path.read_bytes()
    with pytest.raises(SpeedrunError, match="delete it and rerun") as err:
        reference_stats(images, FakeExtractor(), tmp_path, key, keep_features=True)
    assert str(path) in str(err.value)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


RESULTS_DAMAGE = {
    "truncated": (truncate, "not valid JSON"),
    # One bit: '"steps": 20' becomes '"steps": 21', still valid JSON, caught by the digest only.
    "bit flipped": (
        lambda p: flip_byte(p, p.read_bytes().index(b'"steps": 20') + 10, 0x01), "does not match the content"
    ),
    "number edited": (lambda p: replace_in(p, '"fid": 100.0', '"fid": 10.0'), "does not match the content"),
    "not UTF-8": (lambda p: p.write_bytes(b"\xff\xfe{"), "not valid JSON"),
}


@pytest.mark.parametrize("label", list(RESULTS_DAMAGE))
def test_corrupted_results_file_reported_by_run_verify_leaderboard(tmp_path, smoke_data_root, label):
    """`speedrun run` refuses to skip or redo the seed (unless --force), `verify` lists it, the
    leaderboard skips it with the reason; the file keeps its bytes."""
    damage, message = RESULTS_DAMAGE[label]
    repo = tmp_repo(tmp_path / "repo")
    sub = copy_submission(repo / "submissions")
    path = sub / "results" / "smoke" / "seed0.json"
    write_result(path, make_result("baseline"))
    damage(path)
    before = path.read_bytes()
    with pytest.raises(SpeedrunError) as err:
        load_result(path)
    assert str(path) in str(err.value) and message in str(err.value)
    options = RunOptions(
        track="smoke", seed=0, device="cpu", data_dir=smoke_data_root, runs_dir=tmp_path / "runs", progress=False
    )
    with pytest.raises(SpeedrunError, match="`--force` re-runs seed 0, replacing it"):
        run_submission(sub, options, Console(file=io.StringIO()))
    problems = verify_paths([path], repo_root=repo, data_dir=smoke_data_root, info=lambda _: None).problems
    assert any(message in p.message for p in problems), problems
    assert any(message in reason for reason in build_board(repo).skipped)
    result = CliRunner().invoke(app, ["verify", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output and message in result.output, result.output
    assert path.read_bytes() == before and not (tmp_path / "runs").exists()


def test_corrupted_eval_metrics_file_is_reported(tmp_path):
    """A damaged cached `speedrun eval` output is an error with the fix, not a JSON traceback."""
    path = tmp_path / "step-00000020.json"
    report = EvalReport(
        step=20, track="smoke", track_hash="t", checkpoint="c", model_sha256="m", prediction="velocity",
        protocol_hash="p", harness_sha256="h", samples=32, metrics={"fid": 1.0},
    )
    path.write_text(report.model_dump_json())
    assert _read_eval(path) == report
    truncate(path)
    before = path.read_bytes()
    with pytest.raises(SpeedrunError, match="delete it to evaluate that checkpoint again"):
        _read_eval(path)
    assert path.read_bytes() == before
