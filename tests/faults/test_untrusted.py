"""Untrusted entries: validate, verify and leaderboard run no submission code, manifests cannot reach
outside the repository, oversized or deeply nested input is refused fast, and any input ends in
success or one clear SpeedrunError, never another exception or a CLI traceback."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import time

import pytest
from fault_helpers import make_result, run, small_track, speedrun_run_cmd, subprocess_env, tmp_repo, write_submission
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from speedrun.cli import app
from speedrun.errors import SpeedrunError
from speedrun.leaderboard import leaderboard_command
from speedrun.results import load_result, write_result
from speedrun.submission import load_submission
from speedrun.tracks import load_track
from speedrun.verify import verify_paths
from speedrun.worker import blame_submission_code, train_seed

HYPOTHESIS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
BASE = {"name": "x", "authors": ["a"], "tracks": ["smoke"], "description": "d"}


def toml_key(key: str) -> str:
    return json.dumps(key, ensure_ascii=False)  # a TOML basic string is a valid quoted key


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float, str)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(doc: dict) -> str:
    return "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in doc.items())


def marker_code(marker) -> str:
    return f'''
from pathlib import Path

Path({str(marker)!r}).write_text("submission code ran")

from speedrun.components import Component


class Evil(Component):
    name = "evil"
'''


def test_validate_verify_leaderboard_never_import_components_py(tmp_path):
    repo = tmp_repo(tmp_path / "repo")
    marker = tmp_path / "marker"
    sub = write_submission(repo / "submissions", "evil", [{"name": "evil"}], marker_code(marker))
    write_result(sub / "results" / "smoke" / "seed0.json", make_result("evil"))
    assert load_submission(sub).manifest.components[0].name == "evil"
    runner = CliRunner()
    assert runner.invoke(app, ["validate", str(sub)]).exit_code == 0
    verify_paths([sub], repo_root=repo, info=lambda _: None)
    runner.invoke(app, ["verify", str(sub), "--json"])
    leaderboard_command(console=Console(file=io.StringIO()), repo_root=repo)
    leaderboard_command(html=tmp_path / "html", console=Console(file=io.StringIO()), repo_root=repo)
    assert not marker.exists(), "a command imported the submission's components.py"
    assert not any("evil" in name for name in sys.modules)


def manifest_text(**fields) -> str:
    return toml_document({**BASE, **fields})


ESCAPES = {
    "name with ..": ({"name": "../../etc"}, "field 'name'"),
    "absolute name": ({"name": "/etc/passwd"}, "field 'name'"),
    "track with ..": ({"tracks": ["../../../etc/passwd"]}, "field 'tracks'"),
    "absolute track": ({"tracks": ["/etc/passwd"]}, "field 'tracks'"),
    "track with NUL": ({"tracks": ["smoke\u0000"]}, "field 'tracks'"),
    "component with ..": ({"components": [{"name": "../../speedrun/train"}]}, "field 'components.0.name'"),
    "override path": ({"overrides": {"../../etc": 1}}, "field 'overrides'"),
}


@pytest.mark.parametrize("label", list(ESCAPES))
def test_manifest_strings_cannot_escape(tmp_path, label):
    fields, where = ESCAPES[label]
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "submission.toml").write_text(manifest_text(**fields))
    with pytest.raises(SpeedrunError) as err:
        load_submission(folder)
    assert where in str(err.value), str(err.value)


@pytest.mark.parametrize("link", ["components.py", "submission.toml", "results", "data/secret"])
def test_symlinks_out_of_the_submission_are_refused(tmp_path, link):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file").write_text("x = 1\n")
    folder = tmp_path / "x"
    folder.mkdir()
    if link != "submission.toml":
        (folder / "submission.toml").write_text(manifest_text())
    target = outside if link == "results" else outside / "file"
    (folder / link).parent.mkdir(parents=True, exist_ok=True)
    (folder / link).symlink_to(target)
    with pytest.raises(SpeedrunError, match="symlink points outside the submission folder"):
        load_submission(folder)


@pytest.mark.parametrize("track", ["../smoke", "/etc/passwd", "smoke/../../x", "SMOKE", "smoke\n"])
def test_track_ids_cannot_name_files_outside_tracks(track):
    with pytest.raises(SpeedrunError, match="not a valid track id"):
        load_track(track)


def timed_refusal(tmp_path, text: str, match: str) -> float:
    """Seconds to refuse ``text``; callers bound it loosely (10 s): a quadratic parse of these inputs takes minutes,
    while a loaded 2-core machine can stretch a correct refusal past a second."""
    folder = tmp_path / "x"
    folder.mkdir(exist_ok=True)
    (folder / "submission.toml").write_text(text)
    t0 = time.perf_counter()
    with pytest.raises(SpeedrunError, match=match):
        load_submission(folder)
    return time.perf_counter() - t0


def test_huge_manifest_refused_fast(tmp_path):
    text = manifest_text() + "padding = '" + "a" * 1_100_000 + "'\n"
    assert timed_refusal(tmp_path, text, "too large") < 10.0


@pytest.mark.parametrize(
    "nesting",
    [
        "description = " + "[" * 100_000 + "]" * 100_000,
        "[overrides]\nx = " + "{a = " * 50_000 + "1" + "}" * 50_000,
        "[overrides]\n" + "x" + ".a" * 2_000 + " = 1",
        "[[components]]\nname = 'repa'\nparams = " + "[" * 50_000 + "]" * 50_000,
    ],
    ids=["arrays", "inline tables", "dotted keys", "component params"],
)
def test_deeply_nested_manifest_refused_fast(tmp_path, nesting):
    text = manifest_text() + nesting + "\n"
    assert timed_refusal(tmp_path, text, "nested too deeply|nest deeper than") < 10.0


# ---------------------------------------------------------------- known gaps (outside this files)
def _read_toml_in_subprocess(tmp_path, text: str) -> subprocess.CompletedProcess:
    """read_toml under a 1 GB address-space limit and a 30 s timeout (the bug below eats memory and time)."""
    path = tmp_path / "submission.toml"
    path.write_text(text)
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30));"
        "from speedrun.tracks import read_toml; from speedrun.errors import SpeedrunError\n"
        f"try:\n    read_toml(__import__('pathlib').Path({str(path)!r}))\n"
        "except SpeedrunError as e:\n    print('SpeedrunError', e); sys.exit(0)\n"
        "print('parsed'); sys.exit(3)"
    )
    try:
        return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess([], 124, "", "timed out")


def test_quadratic_dotted_key_refused_fast(tmp_path):
    proc = _read_toml_in_subprocess(tmp_path, "x" + ".a" * 100_000 + " = 1\n")
    assert proc.returncode == 0 and "nested too deeply" in proc.stdout, proc.stdout + proc.stderr[-500:]


def test_huge_integer_literal_is_a_speedrun_error(tmp_path):
    timed_refusal(tmp_path, manifest_text() + "x = " + "9" * 5000 + "\n", "invalid TOML")


def test_deep_dotted_key_in_a_manifest_is_refused_by_line(tmp_path):
    text = "name" + ".a" * 3000 + ' = 1\nauthors = ["a"]\ntracks = ["smoke"]\ndescription = "d"\n'
    timed_refusal(tmp_path, text, "line 1: a key nested too deeply")


def test_deep_value_in_a_scalar_field_is_described_without_recursing():
    # Results JSON may nest ~1000 deep (json allows it); the error text must still be one short line.
    from pydantic import ValidationError

    from speedrun.errors import format_validation_error
    from speedrun.submission import Manifest

    deep: object = 1
    for _ in range(3000):
        deep = {"a": deep}
    with pytest.raises(ValidationError) as info:
        Manifest.model_validate({"name": deep, "authors": ["a"], "tracks": ["smoke"], "description": "d"})
    message = format_validation_error("x.toml", info.value)
    assert message.startswith("x.toml: field 'name'") and len(message) < 300


def test_leaderboard_html_does_not_follow_symlinks_out_of_the_submission(tmp_path):
    import base64

    secret = tmp_path / "secret"
    secret.write_bytes(b"-----BEGIN PRIVATE KEY----- not for the leaderboard")
    repo = tmp_repo(tmp_path / "repo")
    sub = write_submission(repo / "submissions", "sneaky", [])
    write_result(sub / "results" / "smoke" / "seed0.json", make_result("sneaky"))
    (sub / "results" / "smoke" / "seed0.png").symlink_to(secret)
    leaderboard_command(html=tmp_path / "html", console=Console(file=io.StringIO()), repo_root=repo)
    page = (tmp_path / "html" / "index.html").read_text()
    assert base64.b64encode(secret.read_bytes()).decode() not in page


# ---------------------------------------------------------------- property-based
text = st.text(max_size=20)
scalars = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), text,
    st.sampled_from(["smoke", "tiny", "x", "baseline", "", "../x", "repa", "optim.lr"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                      max_leaves=12)
fields = st.sampled_from(["name", "authors", "tracks", "description", "components", "overrides", "extra"])
manifests = st.one_of(
    st.dictionaries(text | fields, values, max_size=8),  # anything
    st.builds(lambda over: {**BASE, **over}, st.dictionaries(fields, values, max_size=3)),  # a valid one, mutated
    st.builds(lambda over: {**BASE, "overrides": over}, st.dictionaries(
        st.sampled_from(["optim", "train", "optim.lr", "data", "eval"]), values, max_size=3)),
    st.builds(lambda comps: {**BASE, "components": comps}, st.lists(st.fixed_dictionaries(
        {"name": st.sampled_from(["repa", "tread", "xpred", "evil", "../x"]), "params": values}), max_size=3)),
)


def check_manifest(tmp_path, text: str | bytes) -> None:
    folder = tmp_path / "x"
    folder.mkdir(exist_ok=True)
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    (folder / "submission.toml").write_bytes(raw)
    try:
        load_submission(folder)
    except SpeedrunError as exc:
        assert str(exc).strip(), "an empty error message"


@HYPOTHESIS
@given(doc=manifests)
def test_random_manifests_validate_or_speedrun_error(tmp_path, doc):
    check_manifest(tmp_path, toml_document(doc))


@HYPOTHESIS
@given(raw=st.text(max_size=300) | st.binary(max_size=300))
def test_random_manifest_text_validate_or_speedrun_error(tmp_path, raw):
    check_manifest(tmp_path, raw)


VALID_RESULT = json.loads(make_result("x").model_dump_json())
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


def mutate(data: dict, path: list[str], value) -> dict:
    """``data`` with the field at ``path`` (following existing keys only) replaced by ``value``."""
    out = json.loads(json.dumps(data))
    node = out
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            break
        node = node[key]
    node[path[-1]] = value
    return out


field_paths = st.lists(st.sampled_from(sorted({*VALID_RESULT, *VALID_RESULT["speed"], *VALID_RESULT["timing"],
                                              *VALID_RESULT["provenance"], "speed", "timing", "provenance"})),
                       min_size=1, max_size=2)


def check_result_file(tmp_path, text: str) -> None:
    path = tmp_path / "seed0.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_result(path)
    except SpeedrunError as exc:
        assert str(path) in str(exc)


@HYPOTHESIS
@given(path=field_paths, value=json_values)
def test_mutated_results_load_or_speedrun_error(tmp_path, path, value):
    check_result_file(tmp_path, json.dumps(mutate(VALID_RESULT, path, value), allow_nan=True))


@HYPOTHESIS
@given(doc=json_values, cut=st.integers(0, 5000))
def test_random_results_json_load_or_speedrun_error(tmp_path, doc, cut):
    check_result_file(tmp_path, json.dumps(doc))
    check_result_file(tmp_path, json.dumps(VALID_RESULT)[:cut])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=manifests, path=field_paths, value=json_values)
def test_cli_validate_and_verify_never_show_a_traceback(tmp_path_factory, doc, path, value):
    """Through the CLI: exit 0 (valid), 1 (problems listed) or 2 (one error line); no traceback."""
    root = tmp_path_factory.mktemp("cli")
    folder = root / "x"
    (folder / "results" / "smoke").mkdir(parents=True)
    (folder / "submission.toml").write_text(toml_document(doc), errors="surrogatepass")
    results = folder / "results" / "smoke" / "seed0.json"
    results.write_text(json.dumps(mutate(VALID_RESULT, path, value)), errors="surrogatepass")
    runner = CliRunner()
    for args in (["validate", str(folder)], ["verify", str(folder)], ["verify", str(results), "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code in (0, 1, 2), (args, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
        assert "Traceback" not in result.output


FAULTY = '''
from speedrun.components import Component, Params


class FaultyParams(Params):
    where: str = "setup"


class Faulty(Component):
    name = "faulty"
    Params = FaultyParams

    def setup(self, ctx):
        if self.params.where == "setup":
            raise ValueError("bad layer 99")

    def losses(self, batch, prediction, state):
        if state.step == 2:
            return {"faulty": prediction.sum() * (1 // 0)}
        return {}
'''


def test_submission_code_error_through_cli_names_its_file_and_line(tmp_path, smoke_data_root, fault_cache):
    sub = write_submission(tmp_path, "faulty", [{"name": "faulty"}], code=FAULTY)
    proc = run(speedrun_run_cmd(sub, tmp_path / "runs", smoke_data_root), subprocess_env(fault_cache))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "submission 'faulty' raised ValueError: bad layer 99" in proc.stderr
    assert "faulty/components.py, line 15, in setup: raise ValueError" in proc.stderr
    assert not (sub / "results").exists()


def test_submission_code_error_mid_training_names_the_hook(tmp_path, smoke_data_root):
    components = [{"name": "faulty", "params": {"where": "losses"}}]
    sub = load_submission(write_submission(tmp_path, "faulty", components, FAULTY))
    with pytest.raises(SpeedrunError) as err:
        train_seed(sub, small_track(), 0, tmp_path / "run", data_dir=smoke_data_root, device="cpu", progress=False)
    message = str(err.value)
    assert "raised ZeroDivisionError: integer division or modulo by zero" in message
    assert "components.py, line 19, in losses" in message
    assert isinstance(err.value.__cause__, ZeroDivisionError)


def test_harness_bugs_keep_their_traceback(tmp_path):
    sub = load_submission(write_submission(tmp_path, "plain", []))
    with pytest.raises(KeyError), blame_submission_code(sub):
        {}["harness frame, not the submission's"]
