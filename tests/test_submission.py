"""Submission manifests: the baseline, malformed folders, component resolution, and never importing code.

``CASES`` and ``make_submission`` are reused by tests/test_cli.py, which runs ``speedrun validate`` on
every malformed case.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import Field

from speedrun.components import Component, Params
from speedrun.components.registry import Registry
from speedrun.errors import SpeedrunError
from speedrun.submission import Manifest, Submission, discover_submissions, load_submission
from speedrun.tracks import REPO_ROOT, load_track


def manifest(
    name: str | None = '"s"',
    authors: str | None = '["me"]',
    tracks: str | None = '["smoke"]',
    description: str | None = '"a test entry"',
    tail: str = "",
) -> str:
    """TOML text of a manifest; each argument is the TOML value of its field (None omits it)."""
    fields = {"name": name, "authors": authors, "tracks": tracks, "description": description}
    head = "".join(f"{k} = {v}\n" for k, v in fields.items() if v is not None)
    return head + tail


CUSTOM = '''"""Custom components of a test submission."""
from typing import ClassVar

from speedrun.components import Component, Params


class FooParams(Params):
    weight: float = 0.5


class Foo(Component):
    name = "foo"
    Params = FooParams


class Bar(Component):
    name: ClassVar[str] = "bar"
'''


@dataclass(frozen=True)
class Case:
    """A malformed submission folder and what its error message must say."""

    id: str
    manifest: str | bytes | None
    expected: tuple[str, ...]
    files: dict[str, str | bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # name -> target; "{outside}" is a folder outside
    folder: str = "s"
    blame: str = "submission.toml"  # the file (relative to the folder) the message must start with; "" = folder

    OUTSIDE: ClassVar[str] = "{outside}"


def make_submission(root: Path, case: Case) -> Path:
    """Build ``case`` under ``root`` and return the submission folder."""
    outside = root / "outside"
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.toml").write_text('name = "s"\n')
    folder = root / "subs" / case.folder
    folder.mkdir(parents=True)
    if case.manifest is not None:
        path = folder / "submission.toml"
        if isinstance(case.manifest, bytes):
            path.write_bytes(case.manifest)
        else:
            path.write_text(case.manifest)
    for rel, content in case.files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (folder / rel).write_bytes(content)
        else:
            (folder / rel).write_text(content)
    for rel, target in case.links.items():
        (folder / rel).symlink_to(target.replace(Case.OUTSIDE, str(outside)))
    return folder


def _ov(body: str) -> str:
    return manifest(tail=body)


CASES: list[Case] = [
    # wrong types
    Case("name-not-a-string", manifest(name="5"), ("field 'name'", "valid string", "(got 5)")),
    Case("authors-not-a-list", manifest(authors='"me"'), ("field 'authors'", "valid list", "(got 'me')")),
    Case("authors-empty", manifest(authors="[]"), ("field 'authors'", "at least 1")),
    Case("author-blank", manifest(authors='["  "]'), ("field 'authors'", "non-empty name")),
    Case("tracks-not-a-list", manifest(tracks='"smoke"'), ("field 'tracks'", "valid list", "(got 'smoke')")),
    Case("description-not-a-string", manifest(description="3"), ("field 'description'", "(got 3)")),
    Case("components-a-table", _ov('[components]\nname = "foo"\n'), ("field 'components'", "valid list")),
    Case("overrides-a-list", _ov("overrides = [1]\n"), ("field 'overrides'", "valid dictionary", "(got [1])")),
    Case("params-not-a-table", _ov('[[components]]\nname = "foo"\nparams = 3\n'), ("field 'components.0.params'",)),
    # unknown keys at every level
    Case("unknown-top-level-key", _ov("seed = 1\n"), ("field 'seed'", "unknown field", "(got 1)")),
    Case(
        "unknown-component-key",
        _ov('[[components]]\nname = "foo"\nweight = 1\n'),
        ("field 'components.0.weight'", "unknown field"),
        files={"components.py": CUSTOM},
    ),
    Case("unknown-override-key", _ov("[overrides.optim]\nlrr = 1e-3\n"), ("field 'overrides'", "['optim.lrr']")),
    Case(
        "unknown-override-section",
        _ov('[overrides.model]\nconfig = "tiny"\n'),
        ("field 'overrides'", "['model.config']"),
    ),
    Case("override-not-nested", _ov("[overrides]\nlr = 1e-3\n"), ("field 'overrides'", "overriding ['lr']")),
    # names: path-like, not a slug, not the folder's
    Case("name-dotdot-slash", manifest(name='"../x"'), ("field 'name'", "no paths", "(got '../x')")),
    Case("name-absolute", manifest(name='"/abs"'), ("field 'name'", "(got '/abs')")),
    Case("name-with-slash", manifest(name='"a/b"'), ("field 'name'", "(got 'a/b')")),
    Case("name-dotdot", manifest(name='".."'), ("field 'name'", "(got '..')")),
    Case("name-uppercase", manifest(name='"S"'), ("field 'name'", "(got 'S')")),
    Case("name-trailing-newline", manifest(name='"s\\n"'), ("field 'name'", "(got 's\\n')")),
    Case("name-markup", manifest(name='"[/]"'), ("field 'name'", "(got '[/]')")),
    Case("name-not-folder", manifest(name='"other"'), ("field 'name' is 'other'", "the folder is 's'")),
    # tracks
    Case("unknown-track", manifest(tracks='["smoke", "nope"]'), ("field 'tracks'", "no track 'nope'", "'tiny'")),
    Case(
        "path-like-track",
        manifest(tracks='["../tracks/smoke"]'),
        ("field 'tracks'", "'../tracks/smoke'", "not a valid"),
    ),
    Case("no-tracks", manifest(tracks="[]"), ("field 'tracks'", "at least 1")),
    Case(
        "duplicate-tracks",
        manifest(tracks='["smoke", "tiny", "smoke"]'),
        ("field 'tracks'", "listed twice", "'smoke'"),
    ),
    # overrides the track forbids, or of the wrong type / range
    Case(
        "override-global-batch",
        _ov("[overrides.train]\nglobal_batch = 4\n"),
        ("field 'overrides'", "['train.global_batch']"),
    ),
    Case(
        "override-image-size",
        _ov("[overrides.data]\nimage_size = 64\n"),
        ("field 'overrides'", "['data.image_size']"),
    ),
    Case("override-eval-samples", _ov("[overrides.eval]\nsamples = 8\n"), ("field 'overrides'", "['eval.samples']")),
    Case(
        "override-lr-word",
        _ov('[overrides.optim]\nlr = "fast"\n'),
        ("field 'overrides'", "field 'optim.lr'", "(got 'fast')"),
    ),
    Case("override-lr-numeric-string", _ov('[overrides.optim]\nlr = "1e-3"\n'), ("field 'optim.lr'", "(got '1e-3')")),
    Case(
        "override-negative-lr",
        _ov("[overrides.optim]\nlr = -1e-3\n"),
        ("field 'optim.lr'", "greater than 0", "-0.001"),
    ),
    Case("override-betas-range", _ov("[overrides.optim]\nbetas = [0.9, 1.5]\n"), ("field 'optim.betas.1'", "than 1")),
    Case("override-betas-length", _ov("[overrides.optim]\nbetas = [0.9]\n"), ("field 'optim.betas", "(got [0.9])")),
    Case(
        "override-deeply-nested",
        _ov("[overrides." + ".".join(["optim"] * 40) + "]\nlr = 1\n"),
        ("field 'overrides'", "does not allow overriding ['" + ".".join(["optim"] * 40) + ".lr']"),
    ),
    Case(
        "override-given-twice",
        _ov('[overrides]\n"optim.lr" = 1e-3\n[overrides.optim]\nlr = 2e-3\n'),
        ("field 'overrides'", "'optim.lr' is given twice"),
    ),
    # unreadable files
    Case("invalid-toml", 'name = "s"\nauthors = = ["me"]\n', ("invalid TOML", "at line 2")),
    Case("unterminated-toml", 'name = "s"\nauthors = [\n', ("invalid TOML", "end of document")),
    Case("duplicate-key", manifest() + 'name = "s"\n', ("invalid TOML", "Cannot overwrite a value", "line 5")),
    Case("non-utf8", b'name = "s\xff"\n', ("not UTF-8",)),
    Case("empty-file", "", ("field 'name': Field required", "field 'authors'", "field 'tracks'")),
    Case("two-megabytes", manifest() + "# " + "x" * 2_000_000 + "\n", ("too large", "limit 1 MB")),
    Case(
        "deeply-nested-inline",
        _ov("overrides = " + "{a = " * 2000 + "1" + "}" * 2000 + "\n"),
        ("nested too deeply",),
    ),
    Case("missing-manifest", None, ("no submission.toml",), files={"README.md": "hi"}, blame=""),
    # components
    Case(
        "duplicate-components",
        _ov('[[components]]\nname = "foo"\n[[components]]\nname = "foo"\n'),
        ("field 'components.1'", "'foo' is listed twice"),
        files={"components.py": CUSTOM},
    ),
    Case(
        "unknown-component",
        _ov('[[components]]\nname = "no-such-technique"\n'),
        ("field 'components.0'", "unknown component 'no-such-technique'", "known:"),
    ),
    Case(
        "undeclared-custom-component",
        _ov('[[components]]\nname = "foo"\n[[components]]\nname = "baz"\n'),
        ("field 'components.1'", "unknown component 'baz'", "'bar'", "'foo'"),
        files={"components.py": CUSTOM},
    ),
    Case(
        "component-name-path-like",
        _ov('[[components]]\nname = "../foo"\n'),
        ("field 'components.0.name'", "(got '../foo')"),
    ),
    Case(
        "too-many-components",
        _ov("".join(f'[[components]]\nname = "c{i}"\n' for i in range(17))),
        ("field 'components'", "at most 16"),
    ),
    Case(
        "components-py-syntax-error",
        _ov('[[components]]\nname = "foo"\n'),
        ("not valid Python", "line 2"),
        files={"components.py": "class Foo:\n    name = 'foo\n"},
        blame="components.py",
    ),
    Case(
        "components-py-not-utf8",
        manifest(),
        ("cannot read",),
        files={"components.py": b"x = '\xff'\n"},
        blame="components.py",
    ),
    Case(
        # two classes under one name: `speedrun run` would refuse on import, so validate refuses first,
        # with the registry's own collision message (even when the manifest does not list the name)
        "components-py-name-twice",
        manifest(),
        (":Baz: component name 'foo' is already registered",),
        files={"components.py": CUSTOM + '\n\nclass Baz(Component):\n    name = "foo"\n'},
        blame="components.py",
    ),
    # built-in components' parameters against each targeted track's model (smoke: 2 blocks) and data
    Case(
        "repa-layer-beyond-depth",
        manifest(tail='[[components]]\nname = "repa"\n[components.params]\nlayer = 3\n'),
        ("field 'components.0' (repa).params on track 'smoke'", "layer 3 is outside the denoiser's blocks 1..2"),
    ),
    Case(
        "tread-end-beyond-depth",
        manifest(tail='[[components]]\nname = "tread"\n[components.params]\nend = 5\n'),
        ("field 'components.0' (tread).params on track 'smoke'", "end=5", "<= 2"),
    ),
    Case(
        "tread-range-reversed",
        manifest(tail='[[components]]\nname = "tread"\n[components.params]\nstart = 2\nend = 1\n'),
        ("(tread).params on track 'smoke'", "start=2 .. end=1 must satisfy 1 <= start <= end"),
    ),
    Case(
        "irepa-shapes-encoder-without-teacher",
        manifest(tail='[[components]]\nname = "irepa"\n[components.params]\nteacher = "shapes-encoder"\n'),
        ("(irepa).params on track 'smoke'", "teacher 'shapes-encoder'", "track 'smoke' has none"),
    ),
    # symlinks leaving the folder
    Case(
        "symlink-outside",
        manifest(),
        ("symlink points outside", "outside"),
        links={"data": "{outside}"},
        blame="data",
    ),
    Case(
        "symlink-outside-nested",
        manifest(),
        ("symlink points outside",),
        files={"assets/a.txt": "a"},
        links={"assets/secret": "{outside}/secret.toml"},
        blame="assets/secret",
    ),
    Case("symlink-absolute", manifest(), ("symlink points outside", "/etc"), links={"etc": "/etc"}, blame="etc"),
    Case("symlink-loop", manifest(), ("symlink loop",), links={"l1": "l1"}, blame="l1"),
    Case(
        "manifest-is-symlink-outside",
        None,
        ("symlink points outside", "secret.toml"),
        links={"submission.toml": "{outside}/secret.toml"},
        blame="submission.toml",
    ),
]

assert len(CASES) >= 30
assert len({c.id for c in CASES}) == len(CASES)


def assert_names_case(msg: str, folder: Path, case: Case) -> None:
    """The message starts with the blamed file, holds every expected part, and is one line."""
    blamed = folder / case.blame if case.blame else folder
    assert msg.startswith(f"{blamed}"), (str(blamed), msg)
    for part in case.expected:
        assert part in msg, (part, msg)
    assert "\n" not in msg, msg


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_submission(tmp_path: Path, case: Case) -> None:
    folder = make_submission(tmp_path, case)
    with pytest.raises(SpeedrunError) as info:
        load_submission(folder)
    assert_names_case(str(info.value), folder, case)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SpeedrunError, match="no such submission folder"):
        load_submission(tmp_path / "nope")


@pytest.mark.parametrize("python314", [False, True])
def test_a_folder_name_too_long_is_one_message(tmp_path: Path, request, python314: bool) -> None:
    if python314:  # where Path.is_dir says False, not "too long": it must not read "no such folder"
        request.getfixturevalue("python314_path_checks")
    long = tmp_path / ("a" * 300)
    with pytest.raises(SpeedrunError) as info:
        load_submission(long)
    assert str(info.value) == f"{long}: cannot look at this submission folder (File name too long)"


def test_a_file_of_the_submission_names_its_folder(tmp_path: Path) -> None:
    folder = make_submission(tmp_path, Case("ok", manifest(), (), files={"components.py": CUSTOM}))
    with pytest.raises(SpeedrunError) as info:
        load_submission(folder / "components.py")
    assert str(info.value) == f"{folder / 'components.py'}: a file, not a submission folder; pass its folder, {folder}"
    stray = tmp_path / "notes.txt"
    stray.write_text("")
    with pytest.raises(SpeedrunError) as info:
        load_submission(stray)
    assert str(info.value) == f"{stray}: a file, not a submission folder"
    assert load_submission(folder / "submission.toml").path == folder


# --------------------------------------------------------------------------------------------------
# Valid submissions


def test_baseline_is_valid() -> None:
    sub = load_submission(REPO_ROOT / "submissions" / "baseline")
    assert isinstance(sub, Submission) and isinstance(sub.manifest, Manifest)
    assert sub.name == "baseline"
    assert sub.manifest.tracks == ["tiny", "smoke", "prx-256"]
    assert sub.manifest.components == [] and sub.manifest.overrides == {}
    assert sub.custom_components is None
    assert sub.results_dir("tiny") == REPO_ROOT / "submissions" / "baseline" / "results" / "tiny"
    assert sub.track() == load_track("tiny")  # the first track is the default
    assert sub.track("prx-256").content_hash == load_track("prx-256").content_hash
    # the manifest file itself is accepted as the path too
    assert load_submission(REPO_ROOT / "submissions" / "baseline" / "submission.toml").manifest == sub.manifest


def test_track_not_targeted_names_field(tmp_path: Path) -> None:
    folder = make_submission(tmp_path, Case("ok", manifest(), ()))
    sub = load_submission(folder)
    with pytest.raises(SpeedrunError, match=r"submission.toml: submission 's' does not target track 'tiny'"):
        sub.track("tiny")


def test_a_track_that_does_not_exist_is_named_as_such() -> None:
    """A typo is no track at all, not one the entry happens not to target."""
    sub = load_submission(REPO_ROOT / "submissions" / "baseline")
    with pytest.raises(SpeedrunError, match=r"^no track 'tinyy'; known: \['prx-256', 'smoke', 'tiny'\]$"):
        sub.track("tinyy")
    with pytest.raises(SpeedrunError, match=r"^no track ''"):  # `--track ""` is no default
        sub.track("")


def test_discover_submissions(tmp_path: Path) -> None:
    assert REPO_ROOT / "submissions" / "baseline" in discover_submissions(REPO_ROOT / "submissions")
    for name in ("b", "a"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "submission.toml").write_text(manifest(name=f'"{name}"'))
    (tmp_path / "not-a-submission").mkdir()
    shutil.copytree(tmp_path / "a", tmp_path / ".hidden")
    (tmp_path / "a-link").symlink_to(tmp_path / "a", target_is_directory=True)
    assert discover_submissions(tmp_path) == [tmp_path / "a", tmp_path / "b"]


def test_overrides_and_custom_components_are_valid(tmp_path: Path) -> None:
    text = manifest(
        tracks='["smoke", "tiny"]',
        tail=(
            '[[components]]\nname = "foo"\nparams = { weight = 2.0 }\n[[components]]\nname = "bar"\n'
            "[overrides.optim]\nlr = 2e-3\nbetas = [0.9, 0.99]\n[overrides.train.timesteps]\nshift = 3.0\n"
        ),
    )
    folder = make_submission(tmp_path, Case("ok", text, (), files={"components.py": CUSTOM}))
    # a symlink that stays inside the folder is fine
    (folder / "alias.py").symlink_to(folder / "components.py")
    sub = load_submission(folder)
    assert [c.name for c in sub.manifest.components] == ["foo", "bar"]
    assert sub.manifest.components[0].params == {"weight": 2.0}
    assert sub.custom_components == folder / "components.py"
    assert sub.manifest.flat_overrides() == {
        "optim.lr": 2e-3,
        "optim.betas": [0.9, 0.99],
        "train.timesteps.shift": 3.0,
    }
    for track_id in ("smoke", "tiny"):
        effective = sub.track(track_id)
        assert effective.optim.lr == 2e-3 and effective.optim.betas == (0.9, 0.99)
        assert effective.train.timesteps.shift == 3.0
        assert effective.train.global_batch == load_track(track_id).train.global_batch
        assert effective.content_hash != load_track(track_id).content_hash


def test_validation_never_imports_components_py(tmp_path: Path) -> None:
    marker = tmp_path / "imported.marker"
    code = (
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "raise RuntimeError('components.py must not be imported by validation')\n" + CUSTOM
    )
    text = manifest(tail='[[components]]\nname = "foo"\nparams = { weight = "not checked here" }\n')
    folder = make_submission(tmp_path, Case("ok", text, (), files={"components.py": code}))
    modules_before = set(sys.modules)
    sub = load_submission(folder)
    assert sub.custom_components == folder / "components.py"
    assert not marker.exists()
    assert not [m for m in set(sys.modules) - modules_before if "submission_" in m or m.endswith("components.py")]
    assert sorted(p.name for p in folder.iterdir()) == ["components.py", "submission.toml"]  # no __pycache__


# --------------------------------------------------------------------------------------------------
# Registry-dependent checks (a fake built-in, so the tests do not depend on which techniques exist)


class _ToyParams(Params):
    weight: float = Field(0.5, gt=0)


class _Toy(Component):
    name = "toy"
    Params = _ToyParams


def _toy_registry() -> Registry:
    reg = Registry(lazy={})
    reg.register(_Toy)
    return reg


def test_builtin_params_are_validated(tmp_path: Path) -> None:
    text = _ov('[[components]]\nname = "toy"\nparams = { weight = 2.0 }\n')
    good = make_submission(tmp_path / "g", Case("ok", text, ()))
    assert load_submission(good, registry=_toy_registry()).manifest.components[0].params == {"weight": 2.0}
    assert _ToyParams.model_validate({"weight": 2}).weight == 2.0  # a TOML integer still fills a float
    for body, expected in [
        ("params = { weight = -1.0 }", ("field 'weight'", "greater than 0")),
        ('params = { weight = "heavy" }', ("field 'weight'", "(got 'heavy')")),
        # strict, as tracks are: a number written as a string is not coerced
        ('params = { weight = "0.5" }', ("field 'weight'", "valid number", "(got '0.5')")),
        ("params = { wieght = 1.0 }", ("field 'wieght'", "unknown field")),
        ("params = { weight = inf }", ("field 'weight'", "finite number")),
        ("params = { weight = nan }", ("field 'weight'", "finite number")),
    ]:
        root = tmp_path / str(abs(hash(body)))
        text = _ov(f'[[components]]\nname = "toy"\n{body}\n')
        case = Case("bad", text, ("field 'components.0'", "(toy).params", *expected))
        folder = make_submission(root, case)
        with pytest.raises(SpeedrunError) as info:
            load_submission(folder, registry=_toy_registry())
        assert_names_case(str(info.value), folder, case)


def test_custom_component_colliding_with_builtin(tmp_path: Path) -> None:
    custom = "from speedrun.components import Component\n\nclass MyToy(Component):\n    name = 'toy'\n"
    case = Case(
        "collide",
        _ov('[[components]]\nname = "toy"\n'),
        ("component 'toy' collides with a built-in",),
        files={"components.py": custom},
        blame="components.py",
    )
    folder = make_submission(tmp_path, case)
    with pytest.raises(SpeedrunError) as info:
        load_submission(folder, registry=_toy_registry())
    assert_names_case(str(info.value), folder, case)
    # the same file against a registry without 'toy' is a valid custom component
    assert load_submission(folder, registry=Registry(lazy={})).manifest.components[0].name == "toy"


def test_unknown_component_lists_builtins_and_custom(tmp_path: Path) -> None:
    case = Case(
        "unknown",
        _ov('[[components]]\nname = "nope"\n'),
        ("unknown component 'nope'; known: ['bar', 'foo', 'toy']",),
        files={"components.py": CUSTOM},
    )
    folder = make_submission(tmp_path, case)
    with pytest.raises(SpeedrunError) as info:
        load_submission(folder, registry=_toy_registry())
    assert_names_case(str(info.value), folder, case)
    folder2 = make_submission(tmp_path / "empty", Case("u", _ov('[[components]]\nname = "nope"\n'), ()))
    with pytest.raises(SpeedrunError, match="unknown component 'nope'; known: none"):
        load_submission(folder2, registry=Registry(lazy={}))


def test_manifest_schema_forbids_unknown_keys() -> None:
    assert Manifest.model_config.get("extra") == "forbid"
    m = Manifest.model_validate({"name": "x", "authors": ["a"], "tracks": ["tiny"], "description": "d"})
    assert m.components == [] and m.overrides == {} and m.flat_overrides() == {}
