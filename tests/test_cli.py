"""The ``tracks``, ``validate`` and ``schema`` commands: output, exit codes, one-paragraph errors, no tracebacks.

Most cases run in-process through typer's CliRunner; three run the real console script in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from pydantic import BaseModel
from test_submission import CASES, CUSTOM, Case, assert_names_case, make_submission, manifest
from test_tracks import TRACK_CASES, _content, write_track
from typer.testing import CliRunner

import speedrun.tracks
from speedrun.cli import app
from speedrun.submission import ComponentEntry, Manifest
from speedrun.tracks import REPO_ROOT, TRACKS_DIR, Track, all_tracks, load_track

runner = CliRunner()


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def assert_clean_exit(result: Result, code: int) -> None:
    """Exit ``code`` via SystemExit only (CliRunner keeps any other exception) and no traceback text."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stdout and "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------------------
# speedrun tracks


def test_tracks_table_lists_every_track() -> None:
    result = invoke("tracks")
    assert_clean_exit(result, 0)
    for t in all_tracks():
        # ids, model configs and hash prefixes are never cut, even at the 80 columns of a pipe
        assert t.id in result.stdout and t.model.config in result.stdout and t.content_hash[:12] in result.stdout
    assert "Tracks" in result.stdout and "fid" in result.stdout


def test_tracks_json_is_every_field_and_the_hash() -> None:
    result = invoke("tracks", "--json")
    assert_clean_exit(result, 0)
    listed = json.loads(result.stdout)
    assert [t["id"] for t in listed] == ["prx-256", "smoke", "tiny"]
    for entry in listed:
        track = load_track(entry["id"])
        assert entry.pop("content_hash") == track.content_hash
        assert entry == track.model_dump(mode="json")
        assert Track.model_validate(entry) == track  # the JSON round-trips into the same track
    prx = listed[0]
    assert prx["model"]["config"] == "prx-1.2b" and prx["data"]["image_size"] == 256
    assert prx["optim"]["lr"] == 1e-4 and prx["optim"]["betas"] == [0.9, 0.95] and prx["optim"]["eps"] == 1e-15
    assert prx["train"]["global_batch"] == 256 and prx["train"]["steps"] == 100_000
    assert prx["eval"]["cfg_scale"] == 3.5 and prx["eval"]["sampler_steps"] == 50 and prx["eval"]["seed"] == 42
    assert prx["ranking"] == {"metric": "fid", "direction": "min"}


@pytest.fixture
def broken_tracks_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Point the commands' ``all_tracks()`` at a folder holding one malformed track."""

    def use(content: Any, stem: str) -> Path:
        folder = tmp_path / "tracks"
        path = write_track(folder, _content(content), stem)
        real = speedrun.tracks.all_tracks
        monkeypatch.setattr(speedrun.tracks, "all_tracks", lambda tracks_dir=folder: real(tracks_dir))
        return path

    return use


@pytest.mark.parametrize("command", ["tracks", "validate"])
@pytest.mark.parametrize("case_id,content,stem,expected", TRACK_CASES, ids=[c[0] for c in TRACK_CASES])
def test_malformed_track_is_one_paragraph(
    broken_tracks_dir, command: str, case_id: str, content: Any, stem: str, expected: tuple[str, ...]
) -> None:
    path = broken_tracks_dir(content, stem)
    args = [command, str(REPO_ROOT / "submissions" / "baseline")] if command == "validate" else [command]
    result = invoke(*args)
    assert_clean_exit(result, 2)
    err = result.stderr.rstrip("\n")
    assert err.startswith(f"error: {path}: "), err
    assert "\n" not in err, "one paragraph"
    for part in expected:
        assert part in err, (part, err)
    assert result.stdout == ""


# --------------------------------------------------------------------------------------------------
# speedrun validate


def test_validate_baseline_and_default_discovery() -> None:
    result = invoke("validate", str(REPO_ROOT / "submissions" / "baseline"))
    assert_clean_exit(result, 0)
    assert result.stdout.strip() == f"ok {REPO_ROOT / 'submissions' / 'baseline'} (tracks: tiny, smoke, prx-256)"
    every = invoke("validate")  # no argument: every folder in submissions/, all of which must be valid
    assert_clean_exit(every, 0)
    assert "ok " in every.stdout and "baseline" in every.stdout and every.stderr == ""


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_validate_malformed_submission(tmp_path: Path, case: Case) -> None:
    folder = make_submission(tmp_path, case)
    result = invoke("validate", str(folder))
    assert_clean_exit(result, 1)
    err = result.stderr.rstrip("\n")
    assert err.startswith("invalid: "), err
    assert_names_case(err.removeprefix("invalid: "), folder, case)  # one line, names file and field
    assert result.stdout == ""


def test_validate_reports_each_folder(tmp_path: Path) -> None:
    bad = make_submission(tmp_path / "bad", CASES[0])
    missing = tmp_path / "nope"
    result = invoke("validate", str(REPO_ROOT / "submissions" / "baseline"), str(bad), str(missing))
    assert_clean_exit(result, 1)
    assert result.stdout.startswith("ok ") and result.stdout.count("\n") == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"invalid: {bad / 'submission.toml'}: field 'name'")
    assert lines[1] == f"invalid: {missing}: no such submission folder"


def test_validate_does_not_import_components_py(tmp_path: Path) -> None:
    marker = tmp_path / "imported.marker"
    code = f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit(7)\n" + CUSTOM
    folder = make_submission(
        tmp_path, Case("ok", manifest(tail='[[components]]\nname = "foo"\n'), (), files={"components.py": code})
    )
    result = invoke("validate", str(folder))
    assert_clean_exit(result, 0)
    assert not marker.exists()
    assert not (folder / "__pycache__").exists()


# --------------------------------------------------------------------------------------------------
# speedrun schema


def _defs_by_title(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d.get("title", k): d for k, d in schema.get("$defs", {}).items()}


def _nested_models(model: type[BaseModel]) -> set[type[BaseModel]]:
    found = {model}
    for f in model.model_fields.values():
        for ann in (f.annotation, *getattr(f.annotation, "__args__", ())):
            if isinstance(ann, type) and issubclass(ann, BaseModel) and ann not in found:
                found |= _nested_models(ann)
    return found


def _check_structure(node: Any, root: dict[str, Any]) -> None:
    """A JSON Schema's shape without the jsonschema package: known types, every $ref resolves."""
    types = {"object", "array", "string", "number", "integer", "boolean", "null"}
    if isinstance(node, dict):
        if "type" in node:
            assert node["type"] in types or set(node["type"]) <= types, node["type"]
        if "$ref" in node:
            ref = node["$ref"]
            assert ref.startswith("#/$defs/") and ref.removeprefix("#/$defs/") in root["$defs"], ref
        for v in node.values():
            _check_structure(v, root)
    elif isinstance(node, list):
        for v in node:
            _check_structure(v, root)


def test_schema_that_cannot_be_written_is_one_clean_error(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    (out / "track.schema.json").mkdir(parents=True)  # a folder where the file goes
    result = invoke("schema", "--out", str(out))
    assert_clean_exit(result, 2)
    assert f"{out / 'track.schema.json'}: cannot write it" in result.output
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


def test_schema_writes_valid_json_schemas(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    result = invoke("schema", "--out", str(out))
    assert_clean_exit(result, 0)
    paths = {p.name: p for p in out.glob("*.schema.json")}
    assert {"track.schema.json", "submission.schema.json"} <= set(paths)
    for name in ("track", "submission"):
        assert f"wrote {out / f'{name}.schema.json'}" in result.stdout
    schemas = {name: json.loads(paths[f"{name}.schema.json"].read_text()) for name in ("track", "submission")}
    for name, model in (("track", Track), ("submission", Manifest)):
        schema = schemas[name]
        assert "Generated by `speedrun schema`" in schema["$comment"]
        assert schema["type"] == "object" and schema["title"] == model.__name__
        _check_structure(schema, schema)
        defs = _defs_by_title(schema)
        for sub in _nested_models(model):
            node = schema if sub is model else defs[sub.__name__]
            # properties match the model's fields, required ones are required, and unknown keys are refused
            assert set(node["properties"]) == set(sub.model_fields), sub.__name__
            required = {k for k, f in sub.model_fields.items() if f.is_required()}
            assert set(node.get("required", [])) == required, sub.__name__
            assert node.get("additionalProperties") is False, sub.__name__
    assert ComponentEntry in _nested_models(Manifest)

    # with the jsonschema package (when installed): the schemas are valid and behave as the models do
    try:
        import jsonschema
    except ImportError:
        return
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    manifest_schema = jsonschema.Draft202012Validator(schemas["submission"])
    baseline = tomllib.loads((REPO_ROOT / "submissions" / "baseline" / "submission.toml").read_text())
    assert not list(manifest_schema.iter_errors(baseline))
    errors = list(manifest_schema.iter_errors({**baseline, "seed": 1}))
    assert errors and "seed" in errors[0].message
    entry = {**baseline, "components": [{"name": "repa", "params": {}, "weight": 1}]}
    assert list(manifest_schema.iter_errors(entry))
    track_schema = jsonschema.Draft202012Validator(schemas["track"])
    prx = tomllib.loads((TRACKS_DIR / "prx-256.toml").read_text())
    assert not list(track_schema.iter_errors(prx))
    assert list(track_schema.iter_errors({**prx, "optim": {**prx["optim"], "momentum": 0.9}}))


def test_schema_out_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "schemas"
    blocker.write_text("not a folder")
    result = invoke("schema", "--out", str(blocker))
    assert_clean_exit(result, 2)
    assert result.stderr.startswith(f"error: {blocker}: cannot create the schema folder")


# --------------------------------------------------------------------------------------------------
# The real console script: three subprocesses (each pays the interpreter and torch import)


def _speedrun() -> list[str]:
    script = Path(sys.executable).parent / "speedrun"
    return [str(script)] if script.exists() else [sys.executable, "-m", "speedrun.cli"]


def _run(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*_speedrun(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stdout and "Traceback" not in proc.stderr, proc.stderr
    return proc


def _by_id(case_id: str) -> Case:
    return next(c for c in CASES if c.id == case_id)


def test_subprocess_validate_bad_manifests(tmp_path: Path) -> None:
    ids = ["name-markup", "invalid-toml", "override-lr-word"]
    folders = [make_submission(tmp_path / i, _by_id(i)) for i in ids]
    proc = _run("validate", *map(str, folders), cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 3, proc.stderr  # one paragraph per submission
    for line, folder, case_id in zip(lines, folders, ids):
        assert line.startswith("invalid: ")
        assert_names_case(line.removeprefix("invalid: "), folder, _by_id(case_id))


def test_subprocess_validate_symlink_loop_and_path_name(tmp_path: Path) -> None:
    ids = ["symlink-loop", "name-dotdot-slash"]
    folders = [make_submission(tmp_path / i, _by_id(i)) for i in ids]
    proc = _run("validate", *map(str, folders), cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    for line, folder, case_id in zip(lines, folders, ids):
        assert_names_case(line.removeprefix("invalid: "), folder, _by_id(case_id))


def test_subprocess_validate_never_imports_components(tmp_path: Path) -> None:
    marker = tmp_path / "imported.marker"
    code = f"open({str(marker)!r}, 'w').write('ran')\nimport os\nos._exit(9)\n" + CUSTOM
    folder = make_submission(
        tmp_path, Case("ok", manifest(tail='[[components]]\nname = "bar"\n'), (), files={"components.py": code})
    )
    proc = _run("validate", str(folder), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"ok {folder} (tracks: smoke)")
    assert not marker.exists() and not (folder / "__pycache__").exists()


# --------------------------------------------------------------------------------------------------
# run / eval option ranges: refused by the parser, before any submission code or data is touched


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("run", "submissions/baseline", "--device", "gpu"), "--device"),
        (("run", "submissions/baseline", "--parallel", "zero"), "--parallel"),
        (("run", "submissions/baseline", "--seed", "-1"), "--seed"),
        (("eval", "runs/x", "--track", "tiny", "--device", "tpu"), "--device"),
        (("eval", "runs/x", "--track", "tiny", "--batch-size", "0"), "--batch-size"),
    ],
)
def test_run_and_eval_refuse_out_of_range_options(monkeypatch: pytest.MonkeyPatch, args, option: str) -> None:
    import speedrun.eval.run
    import speedrun.run

    def never(*_a: Any, **_k: Any) -> None:
        raise AssertionError("the command started with an invalid option")

    monkeypatch.setattr(speedrun.run, "run_submission", never)
    monkeypatch.setattr(speedrun.eval.run, "evaluate_checkpoint", never)
    result = invoke(*args)
    assert_clean_exit(result, 2)
    assert option in result.output


def test_run_passes_choices_as_plain_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    import speedrun.run

    seen = {}
    monkeypatch.setattr(speedrun.run, "run_submission", lambda sub, options, console: seen.update(o=options))
    assert_clean_exit(invoke("run", "submissions/baseline", "--device", "cpu", "--parallel", "ddp"), 0)
    assert (seen["o"].device, seen["o"].parallel) == ("cpu", "ddp")
    assert type(seen["o"].device) is str and type(seen["o"].parallel) is str


def test_help_names_the_real_default_folders() -> None:
    for command in ("run", "prepare"):
        result = invoke(command, "--help")
        assert_clean_exit(result, 0)
        text = " ".join(result.stdout.split())
        assert "$SPEEDRUN_DATA_DIR" in text and "./data" not in text


def test_validate_refuses_a_fifo_manifest_within_a_second(tmp_path: Path) -> None:
    """Opening a FIFO would wait for a writer forever: it is refused before it is opened."""
    folder = tmp_path / "s"
    folder.mkdir()
    os.mkfifo(folder / "submission.toml")
    proc = _run("validate", str(folder), cwd=tmp_path, timeout=30)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == f"invalid: {folder / 'submission.toml'}: not a regular file (a FIFO)"


def test_validate_says_custom_parameters_are_checked_at_run_time() -> None:
    result = invoke("validate", str(REPO_ROOT / "submissions" / "custom-example"))
    assert_clean_exit(result, 0)
    assert "custom component(s) deep-supervision: parameters checked when `speedrun run` imports them" in (
        result.stdout.replace("\n", " ")
    )
