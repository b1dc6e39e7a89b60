"""prepare: the smoke track offline, idempotence, resume, pinned hashes, concurrent prepares, and mjv6."""

from __future__ import annotations

import fcntl
import importlib
import multiprocessing
import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from vae_helpers import random_init_vae

from speedrun.data import mjv6, shapes
from speedrun.data.loader import Loader
from speedrun.data.prepare import dataset_definition, dataset_dir, prepare
from speedrun.data.shards import MANIFEST_NAME, SPLITS, open_dataset, read_shard_entry, verify
from speedrun.data.text import get_text_encoder
from speedrun.errors import SpeedrunError
from speedrun.locks import shard_lock
from speedrun.tracks import load_track

prepare_module = importlib.import_module("speedrun.data.prepare")


def count_renders(monkeypatch) -> list[int]:
    """A list that grows by one for each image ``shapes.render`` draws from now on."""
    rendered: list[int] = []
    real_render = shapes.render
    monkeypatch.setattr(shapes, "render", lambda spec, size: rendered.append(1) or real_render(spec, size))
    return rendered


def _forbid(*args, **kwargs):
    raise AssertionError("prepare did work on an already prepared dataset")


def test_smoke_track_offline_and_idempotent(smoke_data_root, monkeypatch):
    """``smoke_data_root`` (tests/conftest.py) prepared the smoke track offline with MiniLM."""
    track = load_track("smoke")
    (out,) = smoke_data_root.iterdir()
    assert out.name.startswith("shapes-32-")
    dataset = verify(out)
    sizes = {name: len(dataset.split(name)) for name in ("train", "validation", "reference")}
    assert sizes == {"train": 512, "validation": 16, "reference": 32}
    assert dataset.manifest.text_encoder.id == "sentence-transformers/all-MiniLM-L6-v2"
    assert dataset.split("train").gather(np.array([0]))["text"].shape == (1, 32, 384)

    monkeypatch.setattr(shapes, "render", _forbid)
    monkeypatch.setattr(prepare_module, "get_text_encoder", _forbid)
    start = time.perf_counter()
    assert prepare(track, smoke_data_root, progress=False) == out
    assert time.perf_counter() - start < 5


def test_resume_keeps_complete_shards_and_redoes_the_rest(tmp_path, monkeypatch, small_track, hash_encoder):
    encoder = hash_encoder(small_track.data.text_max_tokens)
    calls = {"encode": 0}
    original = encoder.encode

    def interrupted(captions):
        calls["encode"] += 1
        if calls["encode"] == 3:
            raise KeyboardInterrupt
        return original(captions)

    encoder.encode = interrupted
    with pytest.raises(KeyboardInterrupt):
        prepare(small_track, tmp_path, progress=False, text_encoder=encoder, examples_per_shard=64)
    out = next(tmp_path.iterdir())
    assert not (out / MANIFEST_NAME).exists()
    assert [read_shard_entry(out / "train", f"shard-{k:05d}") is not None for k in range(3)] == [True, True, False]
    (out / "train" / ".shard-00002.partial-1").mkdir()  # debris of a killed writer

    rendered = count_renders(monkeypatch)
    encoder.encode = original
    assert prepare(small_track, tmp_path, progress=False, text_encoder=encoder, examples_per_shard=64) == out
    assert len(rendered) == 300 + 16 + 32 - 2 * 64
    assert not list((out / "train").glob(".*"))
    verify(out)


def test_a_shard_another_prepare_is_writing_is_left_for_last(tmp_path, small_track, hash_encoder, monkeypatch):
    """Two prepares of one data folder (two `speedrun run`s started together): while one holds a
    shard, with its partial copy on disk, the other writes every other shard first, then says it
    waits and waits rather than delete that copy as debris; then it finds the shard written, or, as
    here where the holder left without writing, builds it."""
    encoder = hash_encoder(small_track.data.text_max_tokens)
    out = dataset_dir(small_track, tmp_path, text_encoder=encoder, examples_per_shard=64)
    partial = out / "train" / ".shard-00000.partial-99999"
    waiting = threading.Event()
    monkeypatch.setattr(prepare_module, "_say_waiting", lambda lock: waiting.set())
    result: dict[str, object] = {}

    def other_prepare() -> None:
        try:
            result["out"] = prepare(small_track, tmp_path, progress=False, text_encoder=encoder, examples_per_shard=64)
        except BaseException as exc:  # re-raised in the test's thread below
            result["error"] = exc

    other = threading.Thread(target=other_prepare)
    with shard_lock(out, "train", "shard-00000", on_wait=lambda lock: None):
        partial.mkdir(parents=True)
        other.start()
        assert waiting.wait(timeout=120), result.get("error")
        assert partial.is_dir() and read_shard_entry(out / "train", "shard-00000") is None
        written = {split: sorted(p.name for p in (out / split).glob("shard-*")) for split in SPLITS}
        others = [f"shard-{k:05d}" for k in range(1, 5)]
        assert written == {"train": others, "validation": ["shard-00000"], "reference": ["shard-00000"]}
    other.join(timeout=300)
    assert not other.is_alive()
    if "error" in result:
        raise result["error"]
    assert result["out"] == out and not partial.exists()
    verify(out)


def test_two_prepares_started_together_split_the_shards(tmp_path, small_track, hash_encoder, monkeypatch):
    """Two prepare processes of one folder at once (forked, so they share this test's fakes): every
    shard is built exactly once, both build some, and the dataset verifies. Building is slowed to
    0.2 s a shard so that the two overlap."""
    encoder = hash_encoder(small_track.data.text_max_tokens)
    real_build = prepare_module._build_shard
    marks = tmp_path / "built"
    marks.mkdir()

    def slow_build(job, *args):
        (marks / f"{job.split}-{job.name}-{os.getpid()}").touch()
        time.sleep(0.2)
        return real_build(job, *args)

    monkeypatch.setattr(prepare_module, "_build_shard", slow_build)
    monkeypatch.setattr(prepare_module, "_say_waiting", lambda lock: None)
    data = tmp_path / "data"
    fork = multiprocessing.get_context("fork")

    def one() -> None:
        prepare(small_track, data, progress=False, text_encoder=encoder, examples_per_shard=64)

    processes = [fork.Process(target=one) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [process.exitcode for process in processes] == [0, 0]
    built = [name.rsplit("-", 1) for name in sorted(p.name for p in marks.iterdir())]
    shards = [shard for shard, _ in built]
    assert len(shards) == 5 + 1 + 1 and len(set(shards)) == len(shards), built
    assert {pid for _, pid in built} == {str(process.pid) for process in processes}, built
    (out,) = data.iterdir()
    verify(out)


def test_a_shard_lock_without_on_wait_reports_a_held_shard_instead_of_waiting(tmp_path):
    with shard_lock(tmp_path, "train", "shard-00000", on_wait=None) as held:
        assert held
        with shard_lock(tmp_path, "train", "shard-00000", on_wait=None) as second:
            assert not second
        with shard_lock(tmp_path, "train", "shard-00001", on_wait=None) as other_shard:
            assert other_shard
    with shard_lock(tmp_path, "train", "shard-00000", on_wait=None) as again:
        assert again


def test_a_shard_lock_that_cannot_be_taken_names_the_file(tmp_path, monkeypatch):
    def no_flock(handle, operation):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(SpeedrunError, match=r"train-shard-00003\.lock: cannot lock shard train/shard-00003 \(No locks"):
        with shard_lock(tmp_path, "train", "shard-00003", on_wait=lambda lock: None):
            pass


@pytest.mark.parametrize("damage", ["flipped byte", "shard deleted"])
def test_following_the_error_repairs_a_damaged_shard(tmp_path, small_track, hash_encoder, monkeypatch, damage):
    # The error names what to delete; doing exactly that and preparing again rebuilds the bad shard
    # (and only it) into the dataset first written.
    encoder = hash_encoder(small_track.data.text_max_tokens)
    track = small_track.model_copy(update={"data": small_track.data.model_copy(update={"train_examples": 40})})
    out = prepare(track, tmp_path, progress=False, text_encoder=encoder, examples_per_shard=16)
    manifest = (out / MANIFEST_NAME).read_bytes()
    target = out / "train" / "shard-00001"
    if damage == "shard deleted":
        shutil.rmtree(target)
    else:
        data = bytearray((target / "x.npy").read_bytes())
        data[-1] ^= 0xFF
        (target / "x.npy").write_bytes(bytes(data))
    with pytest.raises(SpeedrunError, match="train/shard-00001/") as failed:
        prepare(track, tmp_path, progress=False, text_encoder=encoder, examples_per_shard=16)
    advised = re.search(r"delete (\S+) and run prepare again", str(failed.value))
    assert advised and Path(advised.group(1)) == out / MANIFEST_NAME
    Path(advised.group(1)).unlink()
    rendered = count_renders(monkeypatch)
    prepare(track, tmp_path, progress=False, text_encoder=encoder, examples_per_shard=16)
    assert len(rendered) == 16
    verify(out)
    assert (out / MANIFEST_NAME).read_bytes() == manifest


@pytest.mark.parametrize("python314", [False, True])
def test_a_data_folder_name_too_long_is_one_message(tmp_path, small_track, hash_encoder, request, python314):
    if python314:  # where Path.is_file says False, not "too long"
        request.getfixturevalue("python314_path_checks")
    encoder = hash_encoder(small_track.data.text_max_tokens)
    with pytest.raises(SpeedrunError, match=r"cannot look for the dataset there \(File name too long\); choose"):
        prepare(small_track, tmp_path / ("a" * 300), progress=False, text_encoder=encoder)


def test_pinned_split_hashes_are_enforced(tmp_path, make_track, hash_encoder):
    counts = {"train_examples": 20, "validation_examples": 4, "reference_examples": 4}
    good = shapes.split_definition_hash("validation", 4, 32)
    track = make_track(**counts, split_hashes={"validation": good})
    encoder = hash_encoder(32)
    out = prepare(track, tmp_path, progress=False, text_encoder=encoder)
    assert open_dataset(out).split("validation").entry.definition_hash == good
    bad = make_track(**counts, split_hashes={"validation": "0" * 64})
    with pytest.raises(SpeedrunError, match=r"data.split_hashes.validation pins 0{64}"):
        prepare(bad, tmp_path, progress=False, text_encoder=encoder)


@pytest.mark.parametrize("problem", ["read-only", "a-file"])
def test_a_folder_prepare_cannot_write_in_is_refused_before_any_work(
    tmp_path, monkeypatch, read_only, small_track, problem
):
    # The encoders take minutes to load at prx-256: the folder is checked first, with the way out.
    if problem == "a-file":
        (tmp_path / "data").write_text("")
        existing, why = tmp_path / "data", "is a file"
    else:
        (tmp_path / "data").mkdir()
        existing, why = tmp_path / "data", "cannot be written (permission denied)"
        read_only(existing)
    monkeypatch.setattr(prepare_module, "get_text_encoder", _forbid)
    monkeypatch.setattr(shapes, "render", _forbid)
    with pytest.raises(SpeedrunError) as info:
        prepare(small_track, tmp_path / "data" / "datasets", progress=False)
    message = str(info.value)
    assert f": cannot prepare the dataset there: {existing} {why}; choose another folder with --data-dir" in message
    assert message.startswith(str(tmp_path / "data" / "datasets" / "shapes-"))


@pytest.fixture(scope="module")
def mjv6_fixture(tmp_path_factory):
    """12 rows in the real dataset's columns, of assorted sizes and modes, saved with save_to_disk."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(1)
    rows = {"id": [], "prompt": [], "image": [], "llava": [], "llava_status": []}
    for i in range(12):
        width, height = 40 + 4 * i, 64 - 2 * i
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        rows["id"].append(f"mj-{i:03d}")
        rows["prompt"].append(f"prompt {i} --ar 16:9")
        rows["image"].append(image.convert("RGBA") if i % 3 == 0 else image)
        rows["llava"].append("" if i == 5 else f"A long detailed caption of picture number {i}.")
        rows["llava_status"].append("ok")
    features = datasets.Features(
        {name: datasets.Value("string") for name in rows if name != "image"} | {"image": datasets.Image()}
    )
    path = tmp_path_factory.mktemp("mjv6") / "local"
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(path))
    return path, rows


def test_mjv6_end_to_end_on_a_local_fixture(tmp_path, mjv6_fixture, make_track, tiny_t5gemma_config):
    path, rows = mjv6_fixture
    track = make_track(
        "prx-256", image_size=32, train_examples=6, validation_examples=2, reference_examples=3, text_max_tokens=16
    )
    encoder = get_text_encoder("t5gemma", 16, random_init_config=tiny_t5gemma_config)
    vae = random_init_vae()
    kwargs = {"progress": False, "text_encoder": encoder, "vae": vae, "source": path, "examples_per_shard": 2}
    out = prepare(track, tmp_path, **kwargs)
    dataset = verify(out)
    assert dataset.manifest.representation == "latents" and dataset.x_shape == (16, 4, 4)
    assert dataset.manifest.vae.scaling_factor == pytest.approx(0.3611)

    by_caption = {}
    for i in range(12):
        by_caption[rows["llava"][i] or rows["prompt"][i]] = i
    ids = {}
    for name, n in (("train", 6), ("validation", 2), ("reference", 3)):
        split = dataset.split(name)
        assert len(split) == n
        ids[name] = {by_caption[c] for c in split.captions()}
        assert len(ids[name]) == n
    assert not (ids["train"] & ids["reference"]) and not (ids["train"] & ids["validation"])
    assert not (ids["validation"] & ids["reference"])

    reference = dataset.split("reference")
    images = reference.images(np.arange(3))
    for image, caption in zip(images, reference.captions()):
        source = rows["image"][by_caption[caption]]
        assert np.array_equal(image, mjv6.center_crop_resize(source, 32))
    stored = torch.from_numpy(reference.gather_field("x", np.arange(3))).float()
    assert torch.allclose(stored, vae.encode(images), atol=2e-3)  # float16 storage, batch numerics
    batch = next(Loader(dataset.split("train"), 4, seed=0))
    assert batch.x.shape == (4, 16, 4, 4) and batch.text.shape == (4, 16, 32) and batch.images is None
    assert prepare(track, tmp_path, **kwargs) == out

    # prx-256 keeps the train images beside the latents (for REPA teachers); the loader adds them on request.
    train = dataset.split("train")
    for image, caption in zip(train.images(np.arange(6)), train.captions()):
        assert np.array_equal(image, mjv6.center_crop_resize(rows["image"][by_caption[caption]], 32))
    batch = next(Loader(train, 4, seed=0, images=True))
    assert batch.images.dtype == torch.uint8 and np.array_equal(batch.images.numpy(), train.images(batch.index.numpy()))

    # Without data.train_images the train split is latents only, in the directory such datasets had
    # before the field existed (the field is left out of the definition at its default).
    latents_only = track.model_copy(update={"data": track.data.model_copy(update={"train_images": False})})
    assert "train_images" not in dataset_definition(latents_only, text_encoder=encoder, vae=vae)["data"]
    other = prepare(latents_only, tmp_path, **kwargs)
    assert other != out and not open_dataset(other).split("train").has_images


def test_mjv6_offline_without_a_local_copy_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(mjv6.LOCAL_ENV, raising=False)
    with pytest.raises(SpeedrunError, match="cannot load the dataset brivangl/midjourney-v6-llava@main"):
        mjv6.load_source("brivangl/midjourney-v6-llava@main")
