"""A submission edited while its seed trains: the result names the code that trained, not the files
at the end, and `speedrun run` says the result is already stale."""

from __future__ import annotations

from fault_helpers import POISON, write_submission
from typer.testing import CliRunner

import speedrun.train
from speedrun.cli import app
from speedrun.provenance import code_changes, code_record, submission_file_hashes
from speedrun.results import load_result


def test_files_edited_mid_run_are_not_credited_to_the_result(smoke_data_root, tmp_path, monkeypatch):
    sub = write_submission(tmp_path, "poison", [{"name": "poison"}], POISON)  # diverges: no evaluation
    at_start = submission_file_hashes(sub)
    real_run = speedrun.train.Trainer.run

    def run_then_edit(self):
        summary = real_run(self)
        (sub / "components.py").write_text(POISON + "\n# tuned after the fact\n")
        (sub / "EXTRA.md").write_text("added while it ran\n")
        return summary

    monkeypatch.setattr(speedrun.train.Trainer, "run", run_then_edit)
    ran = CliRunner().invoke(app, ["run", str(sub), "--device", "cpu", "--data-dir", str(smoke_data_root),
                                   "--runs-dir", str(tmp_path / "runs")])
    assert ran.exit_code == 0, ran.output
    assert "files changed while it ran" in ran.output
    assert "components.py changed" in ran.output and "EXTRA.md added" in ran.output
    provenance = load_result(sub / "results" / "smoke" / "seed0.json").provenance
    assert provenance.submission_files == at_start
    assert provenance.manifest_sha256 == at_start["submission.toml"]
    assert sorted(map(str, code_changes(provenance.code, code_record(sub)))) == [
        "EXTRA.md added", "components.py changed"
    ]
