"""Divergence: a NaN/Inf loss or gradient stops the run within one step and is never ranked."""

from __future__ import annotations

import io
import json
import math

import pytest
from fault_helpers import POISON, tmp_repo, write_submission
from results_helpers import KEY, seal, sign_result, write_keys
from rich.console import Console

from speedrun.leaderboard import build_board, leaderboard_command, render_markdown
from speedrun.results import load_result
from speedrun.run import RunOptions, run_submission


def diverge(tmp_path, smoke_data_root, kind: str):
    repo = tmp_repo(tmp_path / "repo")
    sub = write_submission(repo / "submissions", "poison", [{"name": "poison", "params": {"kind": kind}}], POISON)
    options = RunOptions(seed=0, device="cpu", data_dir=smoke_data_root, runs_dir=tmp_path / "runs", progress=False)
    [path] = run_submission(sub, options, Console(file=io.StringIO()))
    return repo, sub, path


@pytest.mark.parametrize(("kind", "what"), [("nan", "loss"), ("inf", "loss"), ("grad", "gradient norm")])
def test_non_finite_stops_within_one_step_with_diverged_result(tmp_path, smoke_data_root, kind, what):
    """The step that goes non-finite is not applied; the results file records status, step, reason
    and the last finite loss; no evaluation runs."""
    _, _, path = diverge(tmp_path, smoke_data_root, kind)
    result = load_result(path)
    assert result.status == "diverged" and result.steps == 3
    assert result.failure.step == 3 and result.failure.reason == f"non-finite {what} at step 3"
    run_dir = tmp_path / "runs" / "poison" / "smoke" / "seed0"
    rows = [json.loads(x) for x in (run_dir / "train.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "event" not in r]
    assert [r["step"] for r in steps] == [0, 1, 2]
    assert result.failure.last_finite_loss == steps[-1]["loss"] and math.isfinite(result.failure.last_finite_loss)
    assert result.evals == [] and result.metrics == {} and not (run_dir / "eval").exists()


def test_leaderboard_lists_diverged_entry_unranked(tmp_path, smoke_data_root):
    repo, _, diverged = diverge(tmp_path, smoke_data_root, "nan")
    ok = write_submission(repo / "submissions", "steady", [])
    write_keys(repo, {KEY: "active"})  # both reproduced, so both rankable
    for path in (diverged, seal(ok, "smoke", 0, tracks_dir=repo / "tracks", data_dir=smoke_data_root)):
        sign_result(repo, path)
    board = build_board(repo)
    table = board.tables["smoke"]
    rows = {r["submission"]: r for _, r in table.iterrows()}
    assert not board.skipped, board.skipped
    assert rows["poison"]["status"] == "diverged (seed 0)" and math.isnan(rows["poison"]["rank"])
    assert rows["steady"]["rank"] == 1
    markdown = render_markdown(build_board(repo), ["smoke"])
    poison_line = next(line for line in markdown.splitlines() if "[poison]" in line)
    assert poison_line.startswith("| – | [poison]") and "| diverged (seed 0) |" in poison_line
    assert next(line for line in markdown.splitlines() if "[steady]" in line).startswith("| 1 | [steady]")
    out = io.StringIO()
    assert leaderboard_command(track="smoke", console=Console(file=out, width=300), repo_root=repo) == 0
    assert "diverged (seed 0)" in out.getvalue()
