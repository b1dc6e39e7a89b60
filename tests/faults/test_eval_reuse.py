"""A finished seed run again re-uses its `speedrun eval` outputs only when they still stand: the same
weights, scored under the same track protocol by the same harness code."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from fault_helpers import copy_submission
from rich.console import Console

from speedrun.results import load_result
from speedrun.run import RunOptions, _evaluation_identity, _read_eval, _scored_here, run_submission
from speedrun.tracks import load_track

MARKER_FID = 12345.0


@pytest.mark.parametrize("stale_field", [None, "harness_sha256", "protocol_hash", "track_hash", "model_sha256"])
def test_a_cached_evaluation_is_reused_only_for_the_same_weights_protocol_and_code(
    stale_field, reference_run, smoke_data_root, fault_cache, tmp_path, monkeypatch
):
    """The run folder of a finished seed, its results file moved away: every step's metrics file is
    marked with an impossible FID and, but for the case that must reuse it, one of its identifying
    hashes is changed. A seed started over with --no-resume after an evaluation change trains
    bit-identical weights on a CPU, so the weights alone cannot tell a stale evaluation."""
    monkeypatch.setenv("SPEEDRUN_CACHE_DIR", str(fault_cache))
    sub = copy_submission(tmp_path)
    run_dir = tmp_path / "runs" / "baseline" / "smoke" / "seed0"
    shutil.copytree(reference_run["run_dir"], run_dir)
    cached = sorted((run_dir / "eval").glob("step-*.json"))
    assert cached
    for path in cached:
        report = json.loads(path.read_text())
        assert {"harness_sha256", "protocol_hash", "track_hash", "model_sha256"} <= report.keys()
        report["metrics"]["fid"] = MARKER_FID
        if stale_field:
            report[stale_field] = "0" * 64
        path.write_text(json.dumps(report))
    out = io.StringIO()
    options = RunOptions(
        track="smoke", seed=0, device="cpu", data_dir=smoke_data_root, runs_dir=tmp_path / "runs", progress=False
    )
    run_submission(sub, options, Console(file=out, width=400))
    result = load_result(sub / "results" / "smoke" / "seed0.json")
    reference = load_result(reference_run["results"])
    if stale_field is None:
        assert "evaluating" not in out.getvalue()
        assert [e.metrics["fid"] for e in result.evals] == [MARKER_FID] * len(cached)
    else:
        assert out.getvalue().count("evaluating step-") == len(cached), out.getvalue()
        assert result.evals == reference.evals and result.metrics == reference.metrics
        for path in cached:
            assert json.loads(path.read_text())[stale_field] != "0" * 64


def test_a_submission_with_overrides_reuses_its_cached_evaluation(reference_run):
    """`speedrun eval` records the track file's hash; overrides (training only) change the effective
    track's hash but not what an evaluation means, so they must not force a re-evaluation."""
    run_dir = reference_run["run_dir"]
    report_path = sorted((run_dir / "eval").glob("step-*.json"))[-1]
    report = _read_eval(report_path)
    checkpoint = run_dir / "checkpoints" / report_path.stem
    track = load_track("smoke")
    overridden = track.with_overrides({"optim.lr": track.optim.lr * 2})
    assert overridden.content_hash != track.content_hash == report.track_hash
    assert _evaluation_identity(overridden) == _evaluation_identity(track)
    assert _scored_here(report, checkpoint, _evaluation_identity(overridden))
