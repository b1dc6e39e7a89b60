"""Tracks: the shipped definitions, the reference values of prx-256, validation errors, hashing, overrides.

Every malformed track must fail with a ``SpeedrunError`` whose one-line message names the file and
the field (or value) at fault. ``TRACK_CASES`` is reused by tests/test_cli.py.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from speedrun.errors import SpeedrunError
from speedrun.tracks import (
    OVERRIDABLE,
    TRACKS_DIR,
    Track,
    all_tracks,
    available_tracks,
    canonical_hash,
    load_track,
    load_track_file,
    read_toml,
)

PRX_TEXT = (TRACKS_DIR / "prx-256.toml").read_text()


def prx_dict() -> dict[str, Any]:
    """A fresh, mutable dict of tracks/prx-256.toml."""
    return tomllib.loads(PRX_TEXT)


def to_toml(data: dict[str, Any], *, decorate: bool = False) -> str:
    """A small TOML writer for the shapes tracks use (tables, scalars, flat arrays; None is omitted).

    ``decorate`` writes the same data differently: keys in reverse order, comments, blank lines,
    ``1_000`` style integers and integral floats as integers, to prove formatting cannot move a hash.
    """

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return f"{v:_}" if decorate else str(v)
        if isinstance(v, float):
            return str(int(v)) if decorate and v.is_integer() else repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(type(v))

    lines: list[str] = []

    def table(prefix: str, node: dict[str, Any]) -> None:
        items = list(node.items())[:: -1 if decorate else 1]
        scalars = [(k, v) for k, v in items if not isinstance(v, dict) and v is not None]
        tables = [(k, v) for k, v in items if isinstance(v, dict)]
        if prefix:
            lines.append(f"\n[{prefix}]" + ("  # a table" if decorate else ""))
        for k, v in scalars:
            if decorate:
                lines.append("# a comment line")
            lines.append(f"{json.dumps(k)} = {value(v)}" + ("   # trailing" if decorate else ""))
        for k, v in tables:
            table(f"{prefix}.{k}" if prefix else k, v)

    table("", data)
    return "\n".join(lines) + "\n"


def write_track(folder: Path, data: dict[str, Any] | str | bytes, stem: str = "prx-256") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.toml"
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else to_toml(data))
    return path


# --------------------------------------------------------------------------------------------------
# The shipped tracks and the reference values


def test_shipped_tracks_are_listed_and_valid() -> None:
    assert available_tracks() == ["prx-256", "smoke", "tiny"]
    tracks = all_tracks()
    assert [t.id for t in tracks] == ["prx-256", "smoke", "tiny"]
    assert len({t.content_hash for t in tracks}) == 3


def test_prx256_equals_reference_section_1() -> None:
    """Each value of REFERENCE.md section 1 (PRX part 2 "Flux-Baseline"), asserted one by one."""
    t = load_track("prx-256")
    assert t.id == "prx-256" and t.version >= 1
    # model and input
    assert t.model.config == "prx-1.2b"
    assert t.data.image_size == 256
    assert t.data.representation == "flux-vae"
    assert t.data.vae and "flux" in t.data.vae.lower()
    assert t.data.dataset == "mjv6"
    assert t.data.source.startswith("brivangl/midjourney-v6-llava")
    # text encoder: T5Gemma, 256 tokens
    assert t.data.text_encoder == "t5gemma"
    assert t.data.text_max_tokens == 256
    # REPA on this track (part 2) needs the real images beside the latents
    assert t.data.train_images is True
    # optimizer: AdamW lr 1e-4, weight_decay 0, eps 1e-15, betas (0.9, 0.95), 1000 warmup, clip 0.2
    assert t.optim.name == "adamw"
    assert t.optim.lr == 1e-4
    assert t.optim.weight_decay == 0.0
    assert t.optim.eps == 1e-15
    assert t.optim.betas == (0.9, 0.95)
    assert t.optim.warmup_steps == 1000
    assert t.optim.grad_clip == 0.2
    # budget and training
    assert t.train.global_batch == 256
    assert t.train.steps == 100_000
    assert t.train.max_seconds is None
    assert t.train.ema is False
    assert t.train.caption_dropout == 0.1
    assert t.train.precision == "bf16"
    # timesteps: logit-normal(0, 1), shift 1, 10% uniform, clamp [1e-3, 1)
    ts = t.train.timesteps
    assert ts.mean == 0.0
    assert ts.std == 1.0
    assert ts.shift == 1.0
    assert ts.uniform_fraction == 0.1
    assert ts.t_min == 1e-3
    assert ts.t_max == 1.0
    # evaluation: every 10k steps, 10,000 samples, Euler 50 steps, CFG 3.5, seed 42
    assert t.eval.interval == 10_000
    assert t.eval.samples == 10_000
    assert t.eval.sampler == "euler"
    assert t.eval.sampler_steps == 50
    assert t.eval.cfg_scale == 3.5
    assert t.eval.seed == 42
    assert t.eval.metrics == ("fid", "cmmd", "dino_mmd", "val_loss")
    assert t.eval.extractors == "pretrained"
    # ranking
    assert t.ranking.metric == "fid"
    assert t.ranking.direction == "min"
    # exact types, not merely equal values (a bool is an int, an int equals a float)
    assert type(t.optim.lr) is float and type(t.train.steps) is int and type(t.train.ema) is bool


def test_prx256_allows_no_fixed_field_overrides() -> None:
    allowed = set(load_track("prx-256").rules.allowed_overrides)
    assert allowed <= OVERRIDABLE
    for fixed in ("data.", "model.", "eval.", "ranking.", "rules.", "train.steps", "train.global_batch"):
        assert not any(a.startswith(fixed) for a in allowed), fixed


def test_model_configs_resolve() -> None:
    """prx-1.2b is hidden 1792, depth 16, heads 28, mlp 3.5, patch 2, 16 channels; every track's config exists."""
    try:
        from speedrun.model import MODEL_CONFIGS
    except ImportError as exc:  # speedrun.model is written by another agent
        pytest.skip(f"speedrun.model.MODEL_CONFIGS not importable yet ({exc})")
    cfg = MODEL_CONFIGS[load_track("prx-256").model.config]()
    assert (cfg.hidden_size, cfg.depth, cfg.num_heads) == (1792, 16, 28)
    assert cfg.hidden_size // cfg.num_heads == 64
    assert cfg.mlp_ratio == 3.5
    assert cfg.patch_size == 2
    assert cfg.in_channels == 16
    assert cfg.text_dim == 2304
    for t in all_tracks():
        assert t.model.config in MODEL_CONFIGS, t.id


# --------------------------------------------------------------------------------------------------
# Malformed tracks: (case id, content or mutation of prx-256, file stem, substrings the message must hold)


def _mut(fn: Callable[[dict[str, Any]], None]) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        d = prx_dict()
        fn(d)
        return d

    return make


def _set(path: str, value: Any) -> Callable[[], dict[str, Any]]:
    def fn(d: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        for p in parents:
            d = d[p]
        d[leaf] = value

    return _mut(fn)


def _del(path: str) -> Callable[[], dict[str, Any]]:
    def fn(d: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        for p in parents:
            d = d[p]
        del d[leaf]

    return _mut(fn)


TRACK_CASES: list[tuple[str, Any, str, tuple[str, ...]]] = [
    ("unknown-top-level-key", _set("seed", 1), "prx-256", ("field 'seed'", "unknown field")),
    ("unknown-key-in-data", _set("data.colour", "red"), "prx-256", ("field 'data.colour'", "unknown field")),
    ("unknown-key-in-optim", _set("optim.momentum", 0.9), "prx-256", ("field 'optim.momentum'", "unknown field")),
    (
        "unknown-key-in-timesteps",
        _set("train.timesteps.bogus", 1),
        "prx-256",
        ("field 'train.timesteps.bogus'", "unknown field"),
    ),
    ("unknown-key-in-val-loss", _set("eval.val_loss.x", 1), "prx-256", ("field 'eval.val_loss.x'", "unknown field")),
    ("unknown-key-in-rules", _set("rules.extra", 1), "prx-256", ("field 'rules.extra'", "unknown field")),
    ("steps-as-string", _set("train.steps", "100000"), "prx-256", ("field 'train.steps'", "'100000'")),
    ("ema-as-string", _set("train.ema", "false"), "prx-256", ("field 'train.ema'", "'false'")),
    ("lr-as-numeric-string", _set("optim.lr", "1e-4"), "prx-256", ("field 'optim.lr'", "'1e-4'")),
    ("fractional-batch", _set("train.global_batch", 256.5), "prx-256", ("field 'train.global_batch'", "256.5")),
    ("data-as-scalar", _set("data", 3), "prx-256", ("field 'data'", "(got 3)")),
    ("negative-lr", _set("optim.lr", -1e-4), "prx-256", ("field 'optim.lr'", "greater than 0", "-0.0001")),
    # One generated image has no covariance: FID would fail after all the training.
    ("one-eval-sample", _set("eval.samples", 1), "prx-256", ("field 'eval.samples'", "greater than or equal to 2")),
    # Likewise one reference image, found only when the reference statistics are computed.
    (
        "one-reference-image",
        _set("data.reference_examples", 1),
        "prx-256",
        ("field 'data.reference_examples'", "greater than or equal to 2"),
    ),
    ("beta-of-one", _set("optim.betas", [0.9, 1.0]), "prx-256", ("field 'optim.betas.1'", "less than 1")),
    ("three-betas", _set("optim.betas", [0.9, 0.95, 0.99]), "prx-256", ("field 'optim.betas'",)),
    ("t-min-one", _set("train.timesteps.t_min", 1.0), "prx-256", ("field 'train.timesteps.t_min'", "less than 1")),
    ("version-zero", _set("version", 0), "prx-256", ("field 'version'", "(got 0)")),
    ("unknown-dataset", _set("data.dataset", "laion"), "prx-256", ("field 'data.dataset'", "'laion'")),
    (
        "unknown-metric",
        _set("eval.metrics", ["fid", "is"]),
        "prx-256",
        ("field 'eval.metrics'", "unknown metric", "'is'"),
    ),
    ("metric-twice", _set("eval.metrics", ["fid", "fid"]), "prx-256", ("field 'eval.metrics'", "listed twice")),
    (
        "ranking-metric-not-in-metrics",
        _set("ranking.metric", "prompt_adherence"),
        "prx-256",
        ("ranking.metric 'prompt_adherence'", "not in eval.metrics"),
    ),
    ("ranking-direction", _set("ranking.direction", "up"), "prx-256", ("field 'ranking.direction'", "'up'")),
    (
        "ranking-direction-of-metric",
        _set("ranking.direction", "max"),
        "prx-256",
        ("ranking.direction of 'fid' is 'min', not 'max'",),
    ),
    ("ema", _set("train.ema", True), "prx-256", ("field 'train.ema'", "EMA of the weights is not implemented")),
    (
        "allowed-override-not-overridable",
        _set("rules.allowed_overrides", ["optim.lr", "train.global_batch"]),
        "prx-256",
        ("field 'rules.allowed_overrides'", "'train.global_batch'", "can never be overridden"),
    ),
    ("flux-vae-without-vae", _del("data.vae"), "prx-256", ("field 'data'", "'flux-vae' needs data.vae")),
    ("pixels-with-vae", _set("data.representation", "pixels"), "prx-256", ("field 'data'", "takes no data.vae")),
    (
        "pixels-with-train-images",
        _mut(lambda d: d["data"].update(representation="pixels", vae=None)),
        "prx-256",
        ("field 'data'", "data.train_images is for latent tracks"),
    ),
    ("teacher-off-shapes", _set("data.teacher", {"steps": 10}), "prx-256", ("field 'data'", "dataset 'shapes' only")),
    (
        "teacher-of-latents-without-images",
        _mut(lambda d: d["data"].update(dataset="shapes", train_images=False, teacher={"steps": 10})),
        "prx-256",
        ("field 'data'", "a latent track needs data.train_images = true"),
    ),
    (
        "teacher-patch-not-dividing",
        _mut(lambda d: d["data"].update(dataset="shapes", teacher={"steps": 10, "patch": 7})),
        "prx-256",
        ("field 'data'", "data.teacher.patch 7 does not divide data.image_size 256"),
    ),
    ("missing-eval", _del("eval"), "prx-256", ("field 'eval'", "Field required")),
    ("bad-id", _set("id", "PRX 256"), "prx-256", ("field 'id'", "'PRX 256'")),
    ("id-not-file-name", prx_dict, "other", ("field 'id' is 'prx-256'", "file is named 'other'")),
    ("invalid-toml", "id = \n[data", "prx-256", ("invalid TOML",)),
    ("duplicate-key", 'id = "prx-256"\n' + PRX_TEXT, "prx-256", ("invalid TOML",)),
    ("non-utf8", b'id = "\xff\xfe"\n', "prx-256", ("not UTF-8",)),
    ("empty-file", "", "prx-256", ("field 'id'", "Field required")),
    ("two-megabytes", "# " + "x" * 2_000_000 + "\n", "prx-256", ("too large", "limit 1 MB")),
    ("deeply-nested", "x = " + "{a = " * 2000 + "1" + "}" * 2000 + "\n", "prx-256", ("nested too deeply",)),
]


def _content(case: Any) -> dict[str, Any] | str | bytes:
    return case() if callable(case) else case


@pytest.mark.parametrize("case_id,content,stem,expected", TRACK_CASES, ids=[c[0] for c in TRACK_CASES])
def test_malformed_track_names_file_and_field(
    tmp_path: Path, case_id: str, content: Any, stem: str, expected: tuple[str, ...]
) -> None:
    path = write_track(tmp_path / "tracks", _content(content), stem)
    with pytest.raises(SpeedrunError) as info:
        load_track(stem, tmp_path / "tracks")
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    for part in expected:
        assert part in msg, (part, msg)
    assert "\n" not in msg, "a message is one paragraph"
    assert "Value error" not in msg, "a validator's own words, without pydantic's prefix"


def test_read_toml_reads_no_more_than_its_limit(tmp_path: Path) -> None:
    # /dev/zero never ends (and a FIFO would wait forever): anything but a regular file is refused unopened.
    with pytest.raises(SpeedrunError, match=re.escape("/dev/zero: not a regular file (a character device)")):
        read_toml(Path("/dev/zero"))
    over = tmp_path / "over.toml"
    over.write_bytes(b"#" * 1_000_001)
    with pytest.raises(SpeedrunError, match=re.escape(f"{over}: more than 1000000 bytes is too large")):
        read_toml(over)
    at_limit = tmp_path / "at-limit.toml"
    at_limit.write_text('x = "' + "y" * (1_000_000 - 7) + '"\n')
    assert at_limit.stat().st_size == 1_000_000
    assert len(read_toml(at_limit)["x"]) == 1_000_000 - 7


@pytest.mark.parametrize("track_id", ["nope", "../prx-256", "/abs", "a/b", "..", "smoke\n", "PRX-256", ""])
def test_unknown_or_path_like_track_id_lists_known(track_id: str) -> None:
    with pytest.raises(SpeedrunError) as info:
        load_track(track_id)
    msg = str(info.value)
    assert repr(track_id) in msg
    assert "['prx-256', 'smoke', 'tiny']" in msg
    assert "\n" not in msg


def test_shipped_track_ids_equal_file_names() -> None:
    for path in sorted(TRACKS_DIR.glob("*.toml")):
        assert load_track_file(path).id == path.stem


# --------------------------------------------------------------------------------------------------
# Content hash


def _leaf_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf field of a model class, following nested models (new fields are picked up)."""
    paths = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            paths += _leaf_paths(ann, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def _perturbations(value: Any) -> list[Any]:
    """Changed values of a leaf (each element of a numeric tuple separately)."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1]
    if isinstance(value, float):
        return [value / 2 if value else 0.25]
    if isinstance(value, str):
        return [value + "-x"]
    if value is None:
        return [60.0]
    if isinstance(value, dict):
        return [{**value, "train": "0" * 64}]
    if isinstance(value, tuple) and value and all(isinstance(v, float) for v in value):
        return [value[:i] + (v / 2,) + value[i + 1 :] for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return [value[:-1] if value else ("optim.lr",)]
    raise TypeError(f"no perturbation for {value!r}")


def _replaced(model: BaseModel, path: tuple[str, ...], value: Any) -> BaseModel:
    """``model`` with the field at ``path`` replaced, via model_copy (no validation)."""
    head, *rest = path
    new = _replaced(getattr(model, head), tuple(rest), value) if rest else value
    return model.model_copy(update={head: new})


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        obj = obj[p] if isinstance(obj, dict) else getattr(obj, p)
    return obj


def test_content_hash_changes_with_every_leaf_field() -> None:
    track = load_track("prx-256")
    base = track.content_hash
    leaves = _leaf_paths(Track)
    assert len(leaves) >= 50, leaves  # every section of the track, not a handful
    seen = {base}
    validated = 0
    for path in leaves:
        for new_value in _perturbations(_get(track, path)):
            dumped = track.model_dump(mode="python")
            *parents, leaf = path
            node = _get(dumped, tuple(parents))
            node[leaf] = new_value
            try:  # the perturbed dict is a valid track: go through validation
                changed = Track.model_validate(dumped)
                validated += 1
            except ValidationError:  # e.g. a Literal's other value: model_copy skips validation
                changed = _replaced(track, path, new_value)
            assert _get(changed, path) != _get(track, path), path
            h = changed.content_hash
            assert h != base, f"hash ignores {'.'.join(path)}"
            assert h not in seen, f"{'.'.join(path)} collides with another perturbation"
            seen.add(h)
    assert validated >= len(leaves) // 2  # most perturbations are real, validated tracks


def test_content_hash_is_canonical_json_sha256() -> None:
    track = load_track("prx-256")
    h = track.content_hash
    assert len(h) == 64 and all(c in "0123456789abcdef" for c in h)
    assert h == canonical_hash(json.loads(json.dumps(track.model_dump(mode="json"))))
    assert canonical_hash({"a": 1, "b": 2}) == canonical_hash({"b": 2, "a": 1})
    assert canonical_hash({"a": 1}) != canonical_hash({"a": 1.5})


def test_content_hash_stable_across_processes(tmp_path: Path) -> None:
    code = (
        "import json; from speedrun.tracks import all_tracks; "
        "print(json.dumps({t.id: t.content_hash for t in all_tracks()}))"
    )
    expected = {t.id: t.content_hash for t in all_tracks()}
    for seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True, timeout=120
        )
        assert json.loads(out.stdout) == expected


def test_content_hash_ignores_toml_formatting(tmp_path: Path) -> None:
    original = load_track("prx-256").content_hash
    plain = write_track(tmp_path / "plain", to_toml(prx_dict()))
    fancy_text = to_toml(prx_dict(), decorate=True)
    assert "# a comment line" in fancy_text and "100_000" in fancy_text
    assert '"weight_decay" = 0   # trailing' in fancy_text  # an integral float written as an integer
    fancy = write_track(tmp_path / "fancy", fancy_text)
    assert fancy.read_text() != PRX_TEXT
    # inline tables instead of [section] headers, and a float written in another notation
    inline = PRX_TEXT.replace("lr = 1e-4", "lr = 0.000_1").replace(
        "[eval.val_loss]\nsamples = 1024\ntimesteps = 8\nseed = 0\ninterval = 1000\n", ""
    )
    inline_table = "val_loss = { interval = 1000, seed = 0, timesteps = 8, samples = 1024 }\n"
    inline = inline.replace("batch_size = 50\n", "batch_size = 50\n" + inline_table)
    assert inline != PRX_TEXT and "val_loss = {" in inline
    inline_path = write_track(tmp_path / "inline", inline)
    for path in (plain, fancy, inline_path):
        assert load_track_file(path).content_hash == original, path


# --------------------------------------------------------------------------------------------------
# Overrides


def test_every_overridable_field_exists_in_the_track() -> None:
    dumped = load_track("prx-256").model_dump()
    leaves = {".".join(p) for p in _leaf_paths(Track)}
    for dotted in OVERRIDABLE:
        assert dotted in leaves, dotted
        _get(dumped, tuple(dotted.split(".")))


def test_with_overrides_applies_and_revalidates() -> None:
    track = load_track("prx-256")
    new = track.with_overrides(
        {"optim.lr": 2e-4, "optim.betas": [0.9, 0.99], "train.timesteps.shift": 3.0, "optim.warmup_steps": 0}
    )
    assert isinstance(new, Track)
    assert new.optim.lr == 2e-4 and new.optim.betas == (0.9, 0.99)
    assert new.train.timesteps.shift == 3.0 and new.optim.warmup_steps == 0
    assert Track.model_validate(new.model_dump()) == new
    assert new.content_hash != track.content_hash
    # everything else untouched, the original unchanged (frozen)
    assert new.model_dump(exclude={"optim", "train"}) == track.model_dump(exclude={"optim", "train"})
    assert new.train.model_dump(exclude={"timesteps"}) == track.train.model_dump(exclude={"timesteps"})
    assert track.optim.lr == 1e-4
    with pytest.raises(ValidationError):
        track.optim.lr = 3.0  # type: ignore[misc]
    assert track.with_overrides({}) == track
    assert track.with_overrides({}).content_hash == track.content_hash


@pytest.mark.parametrize(
    "field,value",
    [
        ("train.global_batch", 512),
        ("data.image_size", 512),
        ("eval.samples", 100),
        ("train.steps", 1),
        ("model.config", "tiny"),
        ("eval.cfg_scale", 7.0),
        ("ranking.direction", "max"),
        ("rules.seeds_required", 1),
        ("optim.momentum", 0.9),
    ],
)
def test_with_overrides_rejects_forbidden_field(field: str, value: Any) -> None:
    with pytest.raises(SpeedrunError) as info:
        load_track("prx-256").with_overrides({"optim.lr": 2e-4, field: value})
    msg = str(info.value)
    assert f"track 'prx-256' does not allow overriding ['{field}']" in msg
    assert "'optim.lr'" in msg.split("allowed:")[1]  # lists what is allowed


@pytest.mark.parametrize(
    "field,value,expected",
    [
        ("optim.lr", "fast", "(got 'fast')"),
        ("optim.lr", "2e-4", "(got '2e-4')"),
        ("optim.lr", -1.0, "greater than 0"),
        ("optim.lr", 0.0, "greater than 0"),
        ("optim.betas", [0.9, 1.5], "less than 1"),
        ("optim.betas", [-0.1, 0.9], "greater than or equal to 0"),
        ("optim.betas", [0.9], "Field required (got [0.9])"),
        ("optim.warmup_steps", 10.5, "valid integer"),
        ("optim.grad_clip", True, "valid number"),
        ("train.timesteps.uniform_fraction", 1.5, "less than or equal to 1"),
        # nan and inf pass one-sided bounds (or none) and would be written to results as null
        ("optim.grad_clip", float("inf"), "finite number"),
        ("optim.lr", float("nan"), "finite number"),
        ("train.timesteps.mean", float("nan"), "finite number"),
    ],
)
def test_with_overrides_wrong_value_names_field(field: str, value: Any, expected: str) -> None:
    with pytest.raises(SpeedrunError) as info:
        load_track("prx-256").with_overrides({field: value})
    msg = str(info.value)
    assert msg.startswith("overrides on track 'prx-256': ")
    assert f"field '{field}" in msg and expected in msg, msg  # 'optim.betas.1' names an element


def test_with_overrides_on_a_track_that_allows_nothing(tmp_path: Path) -> None:
    d = prx_dict()
    d["rules"]["allowed_overrides"] = []
    write_track(tmp_path, d)
    with pytest.raises(SpeedrunError, match=r"does not allow overriding \['optim.lr'\]; allowed: nothing"):
        load_track("prx-256", tmp_path).with_overrides({"optim.lr": 1e-3})


def test_to_toml_round_trips() -> None:
    """The helper that writes malformed tracks must itself be faithful."""
    d = prx_dict()
    assert tomllib.loads(to_toml(copy.deepcopy(d))) == d
    assert tomllib.loads(to_toml(copy.deepcopy(d), decorate=True)) == d


def test_timestep_clamp_must_be_an_interval() -> None:
    from speedrun.tracks import TimestepSpec

    with pytest.raises(ValidationError, match=re.escape("t_min (0.5) must be below t_max (0.5)")):
        TimestepSpec(t_min=0.5, t_max=0.5)
    assert TimestepSpec(t_min=0.1, t_max=0.9).t_max == 0.9


@pytest.mark.parametrize("stray", ["prx-256 copy.toml", "Smoke.toml", "folder.toml"])
def test_a_stray_file_in_tracks_is_named(tmp_path: Path, stray: str) -> None:
    tracks = tmp_path / "tracks"
    write_track(tracks, PRX_TEXT, "prx-256")
    if stray == "folder.toml":
        (tracks / stray).mkdir()
    else:
        (tracks / stray).write_text(PRX_TEXT)
    with pytest.raises(SpeedrunError, match=re.escape(f"{tracks / stray}: not a track file")):
        available_tracks(tracks)


# --------------------------------------------------------------------------------------------------
# Track files of one's own, named by their path


def own_track(folder: Path, **data: Any) -> Path:
    """tracks/smoke.toml as a track file of one's own, ``own.toml`` in ``folder``, id "mine"."""
    d = tomllib.loads((TRACKS_DIR / "smoke.toml").read_text())
    d["id"] = "mine"
    d["data"].update(data)
    return write_track(folder, d, "own")


def test_a_track_file_is_named_by_its_path_and_identified_by_its_id(tmp_path: Path) -> None:
    first, second = own_track(tmp_path / "a"), own_track(tmp_path / "b")
    track = load_track(str(first))
    assert (track.id, track.file, track.ref) == ("mine", first, str(first))
    assert track.with_overrides({"optim.lr": 2e-3}).ref == str(first)
    # Where the file lies is no part of the track: the hash every result records is the same.
    assert load_track(str(second)).content_hash == track.content_hash
    assert load_track("smoke").ref == "smoke" and load_track("smoke").file is None
    assert load_track(str(TRACKS_DIR / "smoke.toml")) == load_track("smoke")  # a track of tracks/ by its path


def test_a_track_file_may_not_take_the_id_of_a_track_of_the_folder(tmp_path: Path) -> None:
    path = write_track(tmp_path, (TRACKS_DIR / "tiny.toml").read_text(), "my-tiny")
    with pytest.raises(SpeedrunError) as info:
        load_track(str(path))
    assert str(info.value) == (
        f"{path}: track id 'tiny' is taken by {TRACKS_DIR / 'tiny.toml'}; give this track another id (field 'id')"
    )


def test_an_imagefolder_track_cannot_ask_for_prompt_adherence(tmp_path: Path) -> None:
    path = own_track(tmp_path, dataset="imagefolder", source="images")
    with pytest.raises(SpeedrunError) as info:
        load_track(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: field 'eval': metrics ['prompt_adherence'] need captions annotated"), message
    assert "dataset 'imagefolder' lacks" in message
    d = tomllib.loads(path.read_text())
    d["eval"]["metrics"].remove("prompt_adherence")
    assert load_track(str(write_track(tmp_path, d, "own"))).data.dataset == "imagefolder"
