"""The GitHub workflows: valid against GitHub's workflow schema, and the reproduction's key never sits next to
submission code (the threat model in RELIABILITY.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from speedrun.tracks import REPO_ROOT

WORKFLOWS = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))


def load(name: str) -> dict:
    return yaml.safe_load((REPO_ROOT / ".github" / "workflows" / name).read_text())


def test_every_workflow_matches_githubs_schema() -> None:
    """check-jsonschema's vendored copy of the schema GitHub publishes (SchemaStore's github-workflow.json)."""
    schema = ["--builtin-schema", "vendor.github-workflows"]
    cmd = [sys.executable, "-m", "check_jsonschema", *schema, *map(str, WORKFLOWS)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p.name for p in WORKFLOWS] == ["entries.yml", "reproduce.yml"]


def test_the_job_that_runs_entry_code_holds_no_secret_and_the_signer_runs_none() -> None:
    flow = load("reproduce.yml")
    assert flow["permissions"] == {} and set(flow[True]) == {"workflow_dispatch"}  # YAML 1.1 reads `on` as True
    train, sign = flow["jobs"]["train"], flow["jobs"]["sign"]
    assert "secrets." not in json.dumps(train) and "environment" not in train
    assert train["permissions"] == sign["permissions"] == {"contents": "read"}

    def runs(job: dict) -> str:
        return " ".join(step.get("run", "") for step in job["steps"])

    assert "speedrun reproduce" in runs(train) and "unshare --net" in runs(train) and "speedrun sign" not in runs(train)
    assert sign["needs"] == "train" and sign["environment"] == "reproduction"
    assert "speedrun sign" in runs(sign)
    for word in ("speedrun run", "speedrun reproduce", "pytest", "import "):
        assert word not in runs(sign), word
    [holder] = [step for step in sign["steps"] if "secrets." in json.dumps(step)]
    assert holder["run"].startswith(".venv/bin/speedrun sign")
    for job in (train, sign):  # a checkout keeps no token for code that runs after it
        assert all(s["with"]["persist-credentials"] is False for s in job["steps"] if "checkout" in s.get("uses", ""))


@pytest.mark.parametrize("name", ["entries.yml"])
def test_the_pull_request_checks_never_see_a_secret(name: str) -> None:
    flow = load(name)
    assert "secrets." not in json.dumps(flow) and flow["permissions"] == {"contents": "read"}
