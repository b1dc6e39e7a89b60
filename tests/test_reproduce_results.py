"""tools/reproduce_results.py: finds committed seeds, re-runs them from copies, compares scores and
grids, and replaces only when asked (one real smoke run is re-run; the rest is checked on files)."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("reproduce_results", ROOT / "tools" / "reproduce_results.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _layout(root: Path, results: dict[str, dict[int, dict]], track: str = "smoke") -> None:
    """submissions/<name>/ with a manifest copy and results/<track>/seed<N>.json of the given contents."""
    for name, seeds in results.items():
        folder = root / "submissions" / name
        folder.mkdir(parents=True)
        shutil.copy(ROOT / "submissions" / "baseline" / "submission.toml", folder)
        (folder / "results" / track).mkdir(parents=True)
        for seed, content in seeds.items():
            (folder / "results" / track / f"seed{seed}.json").write_text(json.dumps(content))


def test_find_targets_filters_and_names_mistakes(tool, tmp_path: Path) -> None:
    _layout(tmp_path, {"a": {0: {}, 1: {}, 2: {}}, "b": {0: {}}})
    (tmp_path / "submissions" / "a" / "results" / "smoke" / "seedx.json").write_text("{}")
    (tmp_path / "submissions" / "notes").mkdir()  # no manifest: not a submission

    def found(names=(), seeds=()):
        return [(t.submission.name, t.seed) for t in tool.find_targets(tmp_path, "smoke", list(names), list(seeds))]

    assert found() == [("a", 0), ("b", 0), ("a", 1), ("a", 2)]  # interleaved: seed 0 of every entry first
    assert found(names=["a"], seeds=[0, 2]) == [("a", 0), ("a", 2)]
    with pytest.raises(tool.ToolError, match="--submission c: no .*submission.toml"):
        found(names=["c"])
    with pytest.raises(tool.ToolError, match="no committed results of track 'smoke' match"):
        found(seeds=[5])


def test_score_differences_name_each_score_field_and_ignore_speed(tool) -> None:
    old = {"status": "ok", "steps": 20, "metrics": {"fid": 1.5}, "evals": [], "speed": {"batches_per_second": 3.0}}
    assert tool.score_differences(old, {**old, "speed": {"batches_per_second": 9.0}, "created_at": "x"}) == []
    diffs = tool.score_differences(old, {**old, "metrics": {"fid": 1.5000000000000002}, "steps": 19})
    assert diffs == ["steps: 20 -> 19", 'metrics: {"fid": 1.5} -> {"fid": 1.5000000000000002}']


def test_reproduce_compare_and_replace(tool, smoke_data_root, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SPEEDRUN_DATA_DIR", str(smoke_data_root))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one thread: bit-reproducible between the two runs
    _layout(tmp_path, {"baseline": {}})
    sub = tmp_path / "submissions" / "baseline"
    committed = sub / "results" / "smoke" / "seed0.json"
    cmd = [sys.executable, "-m", "speedrun.cli", "run", str(sub), "--track", "smoke", "--seed", "0",
           "--runs-dir", str(tmp_path / "runs")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    original = committed.read_bytes(), committed.with_suffix(".png").read_bytes()

    work = tmp_path / "work"
    assert tool.main(["--track", "smoke", "--root", str(tmp_path), "--work", str(work), "--replace"]) == 0
    out = capsys.readouterr().out
    assert "baseline seed 0: scores identical; replaced;" in out and "kept in" in out
    new = work / "submissions" / "baseline" / "results" / "smoke" / "seed0.json"
    # The run came from a copy; replacing kept the committed pair and put the new one in place.
    assert (work / "committed" / "baseline" / "smoke" / "seed0.json").read_bytes() == original[0]
    assert (work / "committed" / "baseline" / "smoke" / "seed0.png").read_bytes() == original[1]
    assert committed.read_bytes() == new.read_bytes() != original[0]  # created_at, speed differ
    assert not list(committed.parent.glob(".*partial*"))

    # The new result names the current code: a continued regeneration skips it.
    assert tool.main(["--track", "smoke", "--root", str(tmp_path), "--work", str(work / "again"), "--only-stale"]) == 0
    assert "baseline seed 0: current, skipped" in capsys.readouterr().out

    # A committed score the run does not reproduce, and a grid that differs: both named.
    target = tool.Target(submission=sub, track="smoke", seed=0)
    data = json.loads(committed.read_text())
    data["metrics"]["fid"] += 1.0
    committed.write_text(json.dumps(data))
    committed.with_suffix(".png").write_bytes(b"not the grid")
    diffs, speed = tool.compare(target, new)
    assert [d.split(":")[0] for d in diffs] == ["metrics", "sample grid"]
    assert "batches/s (1.00x)" in speed


def test_differences_block_replace_and_bad_arguments_exit_2(tool, tmp_path: Path, monkeypatch, capsys) -> None:
    _layout(tmp_path, {"a": {0: {"metrics": {"fid": 2.0}}}})
    committed = tmp_path / "submissions" / "a" / "results" / "smoke" / "seed0.json"
    before = committed.read_text()

    def fake_reproduce(target, work, env):
        new = work / "new.json"
        new.write_text(json.dumps({"metrics": {"fid": 3.0}}))
        return new

    monkeypatch.setattr(tool, "reproduce", fake_reproduce)
    args = ["--track", "smoke", "--root", str(tmp_path), "--replace"]
    assert tool.main([*args, "--work", str(tmp_path / "w1")]) == 1
    out = capsys.readouterr().out
    assert "a seed 0: 1 DIFFER;" in out and "replaced" not in out.splitlines()[1] and committed.read_text() == before
    assert tool.main([*args, "--work", str(tmp_path / "w2"), "--allow-changes"]) == 1
    assert json.loads(committed.read_text()) == {"metrics": {"fid": 3.0}}
    assert (tmp_path / "w2" / "committed" / "a" / "smoke" / "seed0.json").read_text() == before

    assert tool.main(["--track", "smoke", "--root", str(tmp_path), "--allow-changes"]) == 2
    assert "only makes sense with --replace" in capsys.readouterr().err
    assert tool.main(["--track", "smoke", "--root", str(tmp_path), "--work", str(tmp_path / "w1")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_replacing_results_another_cpu_model_made_is_refused_before_any_run(tool, tmp_path, monkeypatch, capsys):
    from speedrun.provenance import cpu_model

    other = {"device_type": "cpu", "cpu": "Example CPU 9000 (x86_64)"}  # no machine's name
    _layout(tmp_path, {"a": {0: {"hardware": other}}, "b": {0: {"hardware": {**other, "cpu": cpu_model()}}}})
    runs = []
    monkeypatch.setattr(tool, "reproduce", lambda target, work, env: runs.append(str(target)) or target.result)
    args = ["--track", "smoke", "--root", str(tmp_path), "--replace"]
    assert tool.main([*args, "--work", str(tmp_path / "w")]) == 2 and runs == [] and not (tmp_path / "w").exists()
    assert capsys.readouterr().err == (
        f"error: committed results were made on {other['cpu']}, and this machine is {cpu_model()}: a replaced seed "
        "would carry this machine's speed, and scores may move too, while the leaderboard pairs seeds only within one "
        "CPU model; run it on that model, or add --allow-changes to replace them all with this machine's\n"
    )
    assert tool.main([*args, "--submission", "b", "--work", str(tmp_path / "w1")]) == 0  # made here: it runs
    assert tool.main([*args, "--allow-changes", "--work", str(tmp_path / "w2")]) == 0
    assert runs == ["b seed 0", "a seed 0", "b seed 0"]
