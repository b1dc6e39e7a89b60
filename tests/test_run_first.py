"""A newcomer's first `speedrun run`: a committed result made elsewhere is reproduced on this machine and
compared with, never overwritten; a seed run here before is shown, naming --force; --force runs it again."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import torch
from results_helpers import seal
from rich.console import Console

from speedrun.provenance import hardware_info
from speedrun.results import load_result
from speedrun.run import LOCAL_RESULT, RunOptions, compare_with_committed, run_submission
from speedrun.tracks import TRACKS_DIR, load_track

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


@pytest.mark.parametrize("committed_torch", [torch.__version__, "2.0.0"])
def test_a_seed_that_differs_is_a_bug_to_report_only_in_one_setup(smoke_data_root, tmp_path, committed_torch):
    """A CPU seed reproduces bit for bit on one CPU model with one torch build: a difference there is reported as
    a bug; across setups it is about a change of seed's worth, and says so."""
    folder = tmp_path / "baseline"
    shutil.copytree(REPO / "submissions" / "baseline", folder, ignore=shutil.ignore_patterns("results"))
    hardware = hardware_info(torch.device("cpu"), 1, 1).model_dump()
    software = {"python": "3.11", "triton": None, "cuda": None, "packages_sha256": "0" * 64}

    def result(fid: float, version: str):
        path = seal(folder, "smoke", 0, tracks_dir=TRACKS_DIR, data_dir=smoke_data_root, fid=fid, hardware=hardware,
                    software=software | {"torch": version})  # fmt: skip
        return load_result(path), path

    old, path = result(10.0, committed_torch)
    new, _ = result(10.5, torch.__version__)
    out = io.StringIO()
    compare_with_committed(new, old, path, load_track("smoke"), Console(file=out, width=400))
    text = " ".join(out.getvalue().split())
    here = f"'{hardware['cpu']}', torch {torch.__version__}"
    if committed_torch == torch.__version__:
        assert f"seed 0: differs from the committed result, made in this setup ({here}): " in text
        assert "report it with both results files" in text
    else:
        assert f"seed 0: made on {here}, the committed one on '{hardware['cpu']}', torch 2.0.0: across setups" in text
        assert "report" not in text
