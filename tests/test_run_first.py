"""A newcomer's first `speedrun run`: a committed result made elsewhere is reproduced on this machine and
compared with, never overwritten; a seed run here before is shown, naming --force; --force runs it again."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from rich.console import Console

from speedrun.results import load_result
from speedrun.run import LOCAL_RESULT, RunOptions, run_submission

REPO = Path(__file__).resolve().parents[1]


def _run(folder: Path, data_root: Path, runs: Path, **options: object) -> tuple[list[Path], str]:
    out = io.StringIO()
    chosen = {"track": "smoke", "seed": 0, "device": "cpu", "progress": False, **options}
    paths = run_submission(folder, RunOptions(data_dir=data_root, runs_dir=runs, **chosen), Console(file=out, width=80))
    return paths, out.getvalue()


def test_committed_result_is_reproduced_compared_then_shown_and_force_runs_again(smoke_data_root, tmp_path):
    folder = tmp_path / "baseline"
    shutil.copytree(REPO / "submissions" / "baseline", folder, ignore=shutil.ignore_patterns("results"))
    runs = tmp_path / "runs"
    [committed], text = _run(folder, smoke_data_root, runs)
    assert committed == folder / "results" / "smoke" / "seed0.json"
    local = runs / "baseline" / "smoke" / "seed0" / LOCAL_RESULT
    assert local.read_bytes() == committed.read_bytes()
    committed_bytes = committed.read_bytes()

    # A fresh clone: the committed result is there, this machine never ran the seed.
    shutil.rmtree(runs)
    [mine], text = _run(folder, smoke_data_root, runs)
    assert mine == local and committed.read_bytes() == committed_bytes
    assert "reproducing the committed result" in text
    assert "seed 0: identical to the committed result" in text  # the smoke track is bit-reproducible on one CPU
    assert load_result(mine).metrics == load_result(committed).metrics

    # Run again: nothing trains, the message names --force.
    [shown], text = _run(folder, smoke_data_root, runs)
    assert shown == local and "already reproduced here" in text and "`--force` runs it again" in text

    # --force: trained from step 0 again, the committed file replaced by this machine's result.
    before = load_result(committed).created_at
    [forced], text = _run(folder, smoke_data_root, runs, force=True)
    assert forced == committed and load_result(committed).created_at != before
    assert "resuming" not in text and "identical to the committed result" in text
    assert local.read_bytes() == committed.read_bytes()


def test_the_run_table_keeps_seed_status_and_fid_at_80_columns(smoke_data_root, tmp_path):
    folder = tmp_path / "baseline"
    shutil.copytree(REPO / "submissions" / "baseline", folder, ignore=shutil.ignore_patterns("results"))
    _, text = _run(folder, smoke_data_root, tmp_path / "runs")
    table = text[text.index("Results: baseline on smoke") :]
    assert max(map(len, table.splitlines())) <= 80
    row = next(line for line in table.splitlines() if line.lstrip("│ ").startswith("0 "))
    assert "ok" in row and "fid" in table and "…" not in table
