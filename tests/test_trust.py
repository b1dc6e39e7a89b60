"""Signed results: a dishonest contributor's forgeries are refused by verify and kept off the ranking; a
reproduced, signed result verifies; keys rotate without voiding older signatures."""

from __future__ import annotations

import functools
import io
import json
import math
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from results_helpers import KEY, seal, sign_result, write_keys
from rich.console import Console
from typer.testing import CliRunner

from speedrun.cli import app
from speedrun.errors import SpeedrunError
from speedrun.leaderboard import build_board
from speedrun.provenance import code_record, hardware_info
from speedrun.results import MAX_RESULT_BYTES, compute_digest, load_result
from speedrun.run import RunOptions, run_submission
from speedrun.tracks import TRACKS_DIR
from speedrun.trust import KEYS_FILE, Trust, load_trust, new_key, signature_path
from speedrun.verify import sign_entry, verify_paths

SMOKE = "results/smoke/seed0.json"


def entry(root: Path, name: str) -> Path:
    folder = root / "submissions" / name
    folder.mkdir(parents=True)
    manifest = f'name = "{name}"\nauthors = ["T"]\ntracks = ["smoke"]\ndescription = "x"\n'
    (folder / "submission.toml").write_text(manifest)
    return folder


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The real tracks, the reproduction's key (smoke and tiny reproduced), a signed baseline at FID 20."""
    root = tmp_path / "repo"
    shutil.copytree(TRACKS_DIR, root / "tracks")
    write_keys(root, {KEY: "active"})
    sign_result(root, seal(entry(root, "baseline"), "smoke", 0, tracks_dir=root / "tracks", data_dir=root, fid=20.0))
    return root


def problems_of(root: Path, path: Path) -> list[str]:
    found = verify_paths([], repo_root=root, info=lambda _: None).problems
    return [f"{p.field}: {p.message}" for p in found if p.file == path.relative_to(root).as_posix()]


def ranked(root: Path) -> list[str]:
    table = build_board(root).tables["smoke"]
    return table.loc[table["rank"].notna(), "submission"].tolist()


def reseal(path: Path, edit) -> None:
    """Edit a results file and recompute its digest: an unkeyed sha256 anyone can redo."""
    data = json.loads(path.read_text())
    edit(data)
    data["digest"] = compute_digest(data)
    path.write_text(json.dumps(data, indent=2))


def forge_copy(root: Path, name: str, keep_signature: bool) -> Path:
    """The baseline's result under another entry's name, every identity and hash field made to match."""
    folder = entry(root, name)
    path = folder / SMOKE
    path.parent.mkdir(parents=True)
    shutil.copy(root / "submissions" / "baseline" / SMOKE, path)
    if keep_signature:
        shutil.copy(signature_path(root / "submissions" / "baseline" / SMOKE), signature_path(path))
    code = code_record(folder)

    def rename(data: dict) -> None:
        data["submission"] = name
        data["metrics"]["fid"] = data["evals"][-1]["metrics"]["fid"] = 4.0
        data["provenance"] |= {"manifest_sha256": code["submission_files"]["submission.toml"]}
        data["provenance"]["submission_files"] = code["submission_files"]

    reseal(path, rename)
    return path


def test_a_reproduced_signed_result_verifies_and_ranks(repo: Path) -> None:
    path = repo / "submissions" / "baseline" / SMOKE
    assert problems_of(repo, path) == []
    found = verify_paths([], repo_root=repo, info=lambda _: None)
    assert [a.signed_by for a in found.accepted] == [next(iter(load_trust(repo).keys))]
    assert ranked(repo) == ["baseline"]


@pytest.mark.parametrize("keep_signature", [True, False], ids=["signature-copied", "unsigned"])
def test_a_copied_result_under_another_name_is_refused(repo: Path, keep_signature: bool) -> None:
    path = forge_copy(repo, "forged", keep_signature)
    [problem] = problems_of(repo, path)
    expected = "the signature does not match" if keep_signature else "self-reported: on track 'smoke'"
    assert problem.startswith("signature: ") and expected in problem
    assert ranked(repo) == ["baseline"]
    assert "forged" not in build_board(repo).self_reported["smoke"]["submission"].tolist()


def fid(value: float):
    def edit(data: dict) -> None:
        data["metrics"]["fid"] = data["evals"][-1]["metrics"]["fid"] = value

    return edit


def flip_to_ok(data: dict) -> None:
    metrics = {"fid": 1.0, "cmmd": 0.2, "dino_mmd": 0.3, "val_loss": 0.5, "prompt_adherence": None}
    data.update(status="ok", failure=None, steps=20, metrics=metrics)
    data["evals"] = [{"step": 20, "metrics": metrics, "unavailable": {}, "samples": 32}]


def stepless_point(data: dict) -> None:
    data["val_loss_curve"].append({"val_loss": 0.1})


def curve_out_of_order(data: dict) -> None:
    data["val_loss_curve"].reverse()


def faster(data: dict) -> None:
    data["speed"] |= {"batches_per_second": 400.0, "images_per_second": 400.0 * 8}


SIGNATURE = ("signature", "does not match")


@pytest.mark.parametrize(
    "edit, refused",
    [
        (fid(1.0), SIGNATURE),
        (fid(-1000.0), ("metrics", "'fid' is -1000.0, below the least value the metric takes (0.0)")),
        (fid(math.inf), ("metrics.fid", "Input should be a finite number (got inf)")),  # before the signature
        (flip_to_ok, SIGNATURE),
        (faster, SIGNATURE),
        (stepless_point, ("val_loss_curve.2.step", "Field required")),  # once a crash of verify
        (curve_out_of_order, ("val_loss_curve", "not in strictly increasing step order")),
    ],
    ids=["better-fid", "negative-fid", "infinite-fid", "diverged-flipped-to-ok", "faster", "stepless-curve-point",
         "unordered-curve"],
)
def test_an_edited_signed_result_with_its_digest_recomputed_is_refused(repo: Path, edit, refused) -> None:
    path = repo / "submissions" / "baseline" / SMOKE
    if edit is flip_to_ok:  # a diverged run, reproduced and signed as such
        failure = {"step": 3, "reason": "non-finite loss at step 3"}
        seal(path.parents[2], "smoke", 0, tracks_dir=repo / "tracks", data_dir=repo, status="diverged", steps=3,
             failure=failure, metrics={}, evals=[], unavailable={})  # fmt: skip
        sign_result(repo, path)
        assert problems_of(repo, path) == []
    reseal(path, edit)
    [problem] = problems_of(repo, path)
    field, words = refused
    assert problem.startswith(f"{field}: ") and words in problem
    assert ranked(repo) == []


def test_one_changed_byte_fails_verify(repo: Path) -> None:
    path = repo / "submissions" / "baseline" / SMOKE
    raw = path.read_bytes()
    at = raw.index(b'"created_at": "') + len('"created_at": "')
    path.write_bytes(raw[:at] + b"1" + raw[at + 1 :])
    [problem] = problems_of(repo, path)
    assert problem.startswith("digest: ")


def test_an_added_seed_is_refused_and_never_counted(repo: Path) -> None:
    folder = repo / "submissions" / "baseline"
    extra = seal(folder, "smoke", 1, tracks_dir=repo / "tracks", data_dir=repo, fid=1.0)  # unsigned
    [problem] = problems_of(repo, extra)
    assert "self-reported" in problem
    # Signed by the reproduction, it is shown, never counted: smoke ranks on seed 0 alone.
    sign_result(repo, extra)
    table = build_board(repo).tables["smoke"].set_index("submission")
    assert table.loc["baseline", "seeds"] == "1 + 1 extra" and table.loc["baseline", "metric:fid:mean"] == 20.0


def test_a_signature_by_a_key_not_in_the_repository_or_revoked_fails(repo: Path) -> None:
    path = repo / "submissions" / "baseline" / SMOKE
    stranger = Ed25519PrivateKey.generate()
    write_keys(repo, {KEY: "active", stranger: "active"})
    sign_result(repo, path, stranger)
    write_keys(repo, {KEY: "active"})  # the stranger's key never made it into the repository
    [problem] = problems_of(repo, path)
    assert "which keys/reproduction.toml does not list" in problem
    sign_result(repo, path)  # signed again by the listed key, which then leaks and is revoked
    write_keys(repo, {KEY: "revoked"})
    [problem] = problems_of(repo, path)
    assert "revoked" in problem and ranked(repo) == []


def test_a_retired_key_keeps_its_signatures_and_signs_no_more(repo: Path) -> None:
    successor = Ed25519PrivateKey.generate()
    write_keys(repo, {KEY: "retired", successor: "active"})
    path = repo / "submissions" / "baseline" / SMOKE
    assert problems_of(repo, path) == [] and ranked(repo) == ["baseline"]
    with pytest.raises(SpeedrunError, match="is retired in keys/reproduction.toml: only an active key signs"):
        sign_result(repo, path, KEY)
    sign_result(repo, path, successor)
    assert problems_of(repo, path) == []


@pytest.mark.parametrize("kind", ["symlink", "link-to-dev-zero", "oversized", "nested"])
def test_files_no_reader_should_open_are_refused_before_parsing(repo: Path, kind: str) -> None:
    folder = repo / "submissions" / "baseline"
    path = folder / "results" / "smoke" / "seed1.json"
    if kind == "symlink":
        path.symlink_to(folder / SMOKE)
    elif kind == "link-to-dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "oversized":
        path.write_bytes(b" " * (MAX_RESULT_BYTES + 1))
    else:
        path.write_text("[" * 100_000)
    with pytest.raises(SpeedrunError) as err:
        load_result(path)
    assert str(path) in str(err.value)
    [problem] = problems_of(repo, path)
    words = {"symlink": "symbolic link", "link-to-dev-zero": "symbolic link", "oversized": "limit", "nested": "deep"}
    assert words[kind] in problem
    table = build_board(repo).tables["smoke"].set_index("submission")  # ranked on its valid seed alone
    assert ranked(repo) == ["baseline"] and table.loc["baseline", "seeds"] == "1"


def test_sign_entry_refuses_an_entry_verify_rejects_and_signs_nothing(repo: Path) -> None:
    folder = entry(repo, "fresh")
    path = seal(folder, "smoke", 0, tracks_dir=repo / "tracks", data_dir=repo)
    (folder / "NOTES.md").write_text("added after the run\n")
    reported: list[str] = []
    with pytest.raises(SpeedrunError, match=r"verify found 2 problem\(s\); nothing signed"):  # the file's, the entry's
        sign_entry(folder, "smoke", KEY, repo_root=repo, report=reported.append)
    assert "NOTES.md" in reported[0] and not signature_path(path).exists()


def test_a_new_key_is_private_to_its_owner_and_its_entry_lists_it(tmp_path: Path) -> None:
    out = tmp_path / "reproduction.pem"
    entry_text = new_key(out, holder='the "reproduce" workflow')
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    (tmp_path / KEYS_FILE).parent.mkdir()
    (tmp_path / KEYS_FILE).write_text('reproduces = ["smoke"]\n\n' + entry_text)
    trust = load_trust(tmp_path)
    assert isinstance(trust, Trust) and [k.status for k in trust.key] == ["active"]
    assert trust.key[0].holder == 'the "reproduce" workflow'
    with pytest.raises(SpeedrunError, match="already exists"):
        new_key(out, holder="x")


def _pem(key, encryption=serialization.NoEncryption()) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption).decode()


def _sign_cli(repo: Path, monkeypatch: pytest.MonkeyPatch, folder: Path, *args: str, env: dict) -> tuple[int, str]:
    """``speedrun sign`` on an entry of ``repo``, whose keys file it reads instead of this checkout's; its exit
    code and output without whitespace (the console folds a long path)."""
    monkeypatch.setattr("speedrun.verify.sign_entry", functools.partial(sign_entry, repo_root=repo))
    result = CliRunner().invoke(app, ["sign", str(folder), "--track", "smoke", *args], env=env)
    return result.exit_code, "".join(result.output.split())


def test_keygen_then_sign_from_the_cli_as_the_reproduce_workflow_does(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry `speedrun keygen` prints, pasted into the keys file, lets its key sign through `speedrun sign`,
    read from --key-file or from $SPEEDRUN_SIGNING_KEY (the reproduce workflow's secret): the entry verifies and
    ranks, signed by that key."""
    pem = tmp_path / "repro.pem"
    made = CliRunner().invoke(app, ["keygen", str(pem), "--holder", "the reproduce workflow"])
    assert made.exit_code == 0, made.output
    listed = made.output.split(":\n", 1)[1]
    (repo / KEYS_FILE).write_text((repo / KEYS_FILE).read_text() + "\n" + listed)
    folder = entry(repo, "plain")
    path = seal(folder, "smoke", 0, tracks_dir=repo / "tracks", data_dir=repo, fid=15.0)
    for args, env in ((["--key-file", str(pem)], {}), ([], {"SPEEDRUN_SIGNING_KEY": pem.read_text()})):
        signature_path(path).unlink(missing_ok=True)
        code, output = _sign_cli(repo, monkeypatch, folder, *args, env=env)
        assert code == 0 and f"signed{signature_path(path)}" in output, output
        assert problems_of(repo, path) == []
        found = verify_paths([folder], repo_root=repo, info=lambda _: None)
        assert [a.signed_by for a in found.accepted] == [listed.split('"')[1]]  # the id on the entry's first line
    assert sorted(ranked(repo)) == ["baseline", "plain"]


@pytest.mark.parametrize(
    "key, message",
    [
        (None, "no signing key: pass --key-file or set $SPEEDRUN_SIGNING_KEY"),
        ("-----BEGIN PRIVATE KEY-----\nnot base64\n", "$SPEEDRUN_SIGNING_KEY: not an unencrypted PEM private key"),
        (
            _pem(KEY, serialization.BestAvailableEncryption(b"pw")),
            "$SPEEDRUN_SIGNING_KEY: not an unencrypted PEM private key",
        ),
        (_pem(ec.generate_private_key(ec.SECP256R1())), "$SPEEDRUN_SIGNING_KEY: not an Ed25519 key"),
        (_pem(Ed25519PrivateKey.generate()), "is not listed in keys/reproduction.toml: only an active key signs"),
    ],
    ids=["none", "not-pem", "encrypted", "not-ed25519", "not-listed"],
)
def test_sign_refuses_a_missing_malformed_or_unlisted_key_and_writes_nothing(
    repo: Path, monkeypatch: pytest.MonkeyPatch, key: str | None, message: str
) -> None:
    folder = entry(repo, "plain")
    path = seal(folder, "smoke", 0, tracks_dir=repo / "tracks", data_dir=repo)
    code, output = _sign_cli(repo, monkeypatch, folder, env={"SPEEDRUN_SIGNING_KEY": key})
    assert code == 2 and "".join(message.split()) in output, output
    assert not signature_path(path).exists()


def test_reproduce_then_sign_matches_a_plain_run(tmp_path: Path, smoke_data_root: Path) -> None:
    """`speedrun reproduce` re-runs the required seeds from step 0 over self-reported results; the signed results
    score exactly what a plain run of the same seed scored on this machine."""
    root = tmp_path / "repo"
    shutil.copytree(TRACKS_DIR, root / "tracks")
    write_keys(root, {KEY: "active"})
    folder = entry(root, "plain")
    options = RunOptions(
        track="smoke", seed=0, device="cpu", data_dir=smoke_data_root, runs_dir=tmp_path / "runs", progress=False
    )
    [path] = run_submission(folder, options, Console(file=io.StringIO()))
    plain = load_result(path)
    assert "self-reported" in problems_of(root, path)[0]
    # A baseline made on this machine model: the reproduction's seeds pair with its seeds.
    seal(entry(root, "baseline"), "smoke", 0, tracks_dir=root / "tracks", data_dir=smoke_data_root,
         hardware=plain.hardware.model_dump(), software=plain.software.model_dump())  # fmt: skip
    args = ["reproduce", str(folder), "--track", "smoke", "--data-dir", str(smoke_data_root)]
    result = CliRunner().invoke(app, [*args, "--runs-dir", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    assert f"to sign them: speedrun sign {folder} --track smoke" in result.output
    sign_entry(folder, "smoke", KEY, repo_root=root)
    reproduced = load_result(path)
    assert reproduced.created_at != plain.created_at
    assert reproduced.metrics == plain.metrics and reproduced.val_loss_curve == plain.val_loss_curve
    assert problems_of(root, path) == [] and ranked(root) == ["plain"]


@pytest.mark.parametrize("card, version", [("NVIDIA H100 80GB HBM3", torch.__version__), (None, "1.0")])
def test_reproduce_refuses_another_setup_than_the_baselines_before_any_run(
    tmp_path: Path, smoke_data_root: Path, card: str | None, version: str
) -> None:
    """An entry's seeds pair with the baseline's only on one machine model with one torch build: reproduced in
    another setup (a baseline on a card, or here with another torch), they would never be ranked, so nothing
    runs and nothing is written."""
    root = tmp_path / "repo"
    shutil.copytree(TRACKS_DIR, root / "tracks")
    here = hardware_info(torch.device("cpu"), 1, 1)
    software = {"python": "3.11", "torch": version, "triton": None, "cuda": None, "packages_sha256": "0" * 64}
    hardware = {} if card else {"hardware": here.model_dump()}
    made_in = seal(entry(root, "baseline"), "smoke", 0, tracks_dir=root / "tracks", data_dir=smoke_data_root,
                   card=card, software=software, **hardware).parent  # fmt: skip
    made = f"'{card}' (cuda) with CPU 'x86_64'" if card else f"'{here.cpu}'"
    folder = entry(root, "plain")
    args = ["reproduce", str(folder), "--track", "smoke", "--data-dir", str(smoke_data_root)]
    result = CliRunner().invoke(app, [*args, "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"{made_in}: the baseline's results were made on {made}, torch {version}, and this run would be " \
        f"made on '{here.cpu}', torch {torch.__version__}:" in message  # fmt: skip
    assert "reproduce the entry where the baseline's were made" in message
    assert not (tmp_path / "runs").exists() and not (folder / "results").exists()


def test_the_baseline_itself_is_reproduced_in_any_setup(tmp_path: Path, smoke_data_root: Path) -> None:
    """Moving the baseline to another machine model (a new reproduction runner) is how a track changes setup:
    its own reproduction is never refused for the setup of its earlier results, and replaces them."""
    root = tmp_path / "repo"
    shutil.copytree(TRACKS_DIR, root / "tracks")
    folder = entry(root, "baseline")
    path = seal(folder, "smoke", 0, tracks_dir=root / "tracks", data_dir=smoke_data_root, card="NVIDIA H100 80GB HBM3")
    args = ["reproduce", str(folder), "--track", "smoke", "--data-dir", str(smoke_data_root)]
    result = CliRunner().invoke(app, [*args, "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert load_result(path).hardware == hardware_info(torch.device("cpu"), 1, 1)
