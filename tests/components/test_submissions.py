"""The shipped submissions: they validate, train on the smoke track offline, and one runs end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from speedrun.checkpoint import load_denoiser_strict
from speedrun.errors import SpeedrunError
from speedrun.model import build_model
from speedrun.results import load_result
from speedrun.run import RunOptions, run_submission
from speedrun.submission import load_submission
from speedrun.worker import build_components, train_seed

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ["repa-dinov2", "repa-dinov3", "irepa-dinov2", "tread", "contrastive-fm", "xpred", "custom-example"]
HEADS = {
    "repa-dinov2": {"repa"},
    "repa-dinov3": {"repa"},
    "irepa-dinov2": {"irepa"},
    "custom-example": {"deep_supervision"},
}
# REPA and iREPA aligned to the teacher that prepare trains for tiny (tests/data/test_teacher.py trains them).
TINY_TEACHER = ["repa-shapes", "irepa-shapes"]


def test_every_shipped_submission_is_tested_here():
    folders = {p.parent.name for p in (REPO / "submissions").glob("*/submission.toml")}
    assert folders == {"baseline", *SHIPPED, *TINY_TEACHER}


@pytest.mark.parametrize("name", TINY_TEACHER)
def test_tiny_alignment_entries_name_the_tracks_own_teacher(name):
    sub = load_submission(REPO / "submissions" / name)
    assert sub.manifest.tracks == ["tiny"] and sub.track("tiny").data.teacher is not None
    assert [c.params.teacher for c in build_components(sub)] == ["shapes-encoder"]


@pytest.mark.parametrize("name", SHIPPED)
def test_submission_validates_and_trains_on_smoke(name, smoke_data_root, tmp_path):
    """What ``speedrun run`` trains, cut to 1 timed step (after the track's 2 untimed warmup steps)."""
    sub = load_submission(REPO / "submissions" / name)
    assert "smoke" in sub.manifest.tracks
    assert [c.name for c in build_components(sub)] == [c.name for c in sub.manifest.components]
    summary = train_seed(
        sub,
        sub.track("smoke"),
        0,
        tmp_path / "run",
        data_dir=smoke_data_root,
        device="cpu",
        progress=False,
        stop_after=1,
    )
    assert summary.status == "ok" and summary.steps == 1
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000001"
    meta = load_denoiser_strict(ckpt, build_model("smoke", text_dim=meta_text_dim(ckpt)))
    assert {k.split(".")[1] for k in meta.component_keys} == HEADS.get(name, set())
    assert meta.prediction == ("x0" if name == "xpred" else "velocity")


@pytest.mark.parametrize("name", SHIPPED)
def test_submission_targets_prx256_and_validates_there(name):
    """Every technique ships for the real track too; REPA and iREPA can, since prx-256 keeps the
    train images their teachers read (training there needs the GPUs and the teacher weights)."""
    sub = load_submission(REPO / "submissions" / name)
    assert "prx-256" in sub.manifest.tracks
    track = sub.track("prx-256")
    assert track.data.train_images or not {"repa", "irepa"} & {c.name for c in sub.manifest.components}
    assert [c.name for c in build_components(sub)] == [c.name for c in sub.manifest.components]


def meta_text_dim(ckpt: Path) -> int:
    return json.loads((ckpt / "meta.json").read_text())["text_dim"]


@pytest.mark.slow
def test_speedrun_run_end_to_end_offline(smoke_data_root, tmp_path):
    """``speedrun run submissions/xpred --track smoke``: train, evaluate in a separate process
    (converting x0 predictions without submission code), write a valid results file."""
    folder = tmp_path / "xpred"
    shutil.copytree(REPO / "submissions" / "xpred", folder)  # results/ is written beside the manifest
    options = RunOptions(
        track="smoke", data_dir=smoke_data_root, runs_dir=tmp_path / "runs", device="cpu", progress=False
    )
    [path] = run_submission(folder, options, Console(quiet=True))
    result = load_result(path)
    assert result.status == "ok" and result.steps == 20 and result.submission == "xpred"
    assert result.metrics["val_loss"] is not None and result.metrics["fid"] is not None


def test_a_custom_components_bad_params_are_named_when_run_imports_it(smoke_data_root, tmp_path):
    """A custom component's Params are checked only once `speedrun run` imports components.py (validate leaves
    them, submission code is not imported there): the run stops there, naming the field, and writes no result."""
    folder = tmp_path / "custom-example"
    shutil.copytree(REPO / "submissions" / "custom-example", folder, ignore=shutil.ignore_patterns("results"))
    manifest = folder / "submission.toml"
    manifest.write_text(manifest.read_text().replace("weight = 0.1", "weight = -1"))
    load_submission(folder)
    options = RunOptions(track="smoke", data_dir=smoke_data_root, runs_dir=tmp_path / "runs", device="cpu")
    with pytest.raises(SpeedrunError) as refused:
        run_submission(folder, options, Console(quiet=True))
    assert str(refused.value) == (
        f"{manifest}: components.0 (deep-supervision).params: field 'weight': Input should be greater than or "
        "equal to 0 (got -1)"
    )
    assert not (folder / "results").exists()
