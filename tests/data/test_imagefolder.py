"""The imagefolder source: a folder of one's own captioned images, checked where it enters, split and decoded
as mjv6's rows are, its prepared dataset named by the folder's bytes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from speedrun.data import imagefolder, mjv6
from speedrun.data.prepare import dataset_dir, prepare
from speedrun.data.shards import verify
from speedrun.errors import SpeedrunError
from speedrun.tracks import TRACKS_DIR, Track, load_track

SMOKE = (TRACKS_DIR / "smoke.toml").read_text()


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))


def make_folder(root: Path, n: int = 12) -> dict[str, str]:
    """``n`` images of assorted sizes and modes (one in a subfolder) and their metadata; file_name -> caption."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    captions = {}
    for i in range(n):
        name = f"sub/{i:02d}.png" if i == 3 else f"{i:02d}.png"
        pixels = rng.integers(0, 256, (30 + 2 * i, 50 - i, 3), dtype=np.uint8)
        (root / name).parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).convert("RGBA" if i % 4 == 0 else "RGB").save(root / name)
        captions[name] = f"picture {i} " if i % 5 else f" a caption of picture {i}"
    (root / "metadata.jsonl").write_text(
        "\n".join(json.dumps({"file_name": k, "text": v, "extra": 1}) for k, v in captions.items()) + "\n\n"
    )
    return captions


def own_track(folder: Path, train_examples: int = 6) -> Track:
    """The smoke track over the imagefolder ``images`` beside it, a track file of one's own in ``folder``."""
    text = SMOKE.replace('id = "smoke"', 'id = "mine"').replace('"shapes"', '"imagefolder"')
    text = text.replace('"shapes-v1"', '"images"').replace(', "prompt_adherence"]', "]")
    text = text.replace("train_examples = 512", f"train_examples = {train_examples}")
    text = text.replace("validation_examples = 16", "validation_examples = 2")
    (folder / "track.toml").write_text(text.replace("reference_examples = 32", "reference_examples = 3"))
    return load_track(str(folder / "track.toml"))


def test_prepare_splits_and_resizes_the_folder(tmp_path, hash_encoder):
    captions = make_folder(tmp_path / "images")
    track = own_track(tmp_path)
    out = prepare(track, tmp_path / "data", progress=False, text_encoder=hash_encoder(16), examples_per_shard=4)
    assert out.name.startswith("imagefolder-32-")
    dataset = verify(out)
    by_caption = {text.strip(): name for name, text in captions.items()}
    names = {}
    for split, n in (("train", 6), ("validation", 2), ("reference", 3)):
        part = dataset.split(split)
        names[split] = {by_caption[c] for c in part.captions()}
        assert len(part) == len(names[split]) == n
        for image, caption in zip(part.images(np.arange(n)), part.captions()):
            with Image.open(tmp_path / "images" / by_caption[caption]) as source:
                assert np.array_equal(image, mjv6.center_crop_resize(source, 32))
    assert not (names["train"] & names["validation"] or names["train"] & names["reference"])
    assert not names["validation"] & names["reference"]


def test_the_dataset_is_named_by_the_folders_bytes_not_its_place(tmp_path):
    make_folder(tmp_path / "a" / "images")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    first, second = own_track(tmp_path / "a"), own_track(tmp_path / "b")
    assert dataset_dir(first, tmp_path) == dataset_dir(second, tmp_path)
    metadata = tmp_path / "b" / "images" / "metadata.jsonl"
    metadata.write_text(metadata.read_text().replace("picture 1 ", "picture one"))
    assert dataset_dir(first, tmp_path) != dataset_dir(second, tmp_path)


BAD_ROWS = [
    ('{"file_name": "00.png"}', "not a row like"),
    ('{"text": "no file"}', "not a row like"),
    ('{"file_name": "00.png", "text": 3}', "not a row like"),
    ('["00.png", "a list"]', "not a row like"),
    ("{not json", "not a row like"),
    ('{"file_name": "nope.png", "text": "x"}', "file_name 'nope.png' is no file in"),
    ('{"file_name": "../images/00.png", "text": "x"}', "file_name '../images/00.png' is no file in"),
    ('{"file_name": "sub", "text": "a folder"}', "file_name 'sub' is no file in"),
]


@pytest.mark.parametrize("row,message", BAD_ROWS)
def test_a_bad_metadata_row_is_named_with_its_line(tmp_path, row, message):
    make_folder(tmp_path / "a" / "images")
    metadata = tmp_path / "a" / "images" / "metadata.jsonl"
    lines = metadata.read_text().splitlines()
    metadata.write_text("\n".join([*lines[:2], "", row, *lines[2:]]))
    with pytest.raises(SpeedrunError) as info:
        imagefolder.read_metadata(metadata.parent)
    assert str(info.value).startswith(f"{metadata} line 4: {message}"), str(info.value)


def test_a_folder_without_metadata_says_what_it_needs(tmp_path):
    with pytest.raises(SpeedrunError, match=r"missing/metadata.jsonl: cannot read it .*one row a line like \{"):
        imagefolder.read_metadata(tmp_path / "missing")


def test_an_unreadable_image_is_named_with_its_line(tmp_path, hash_encoder):
    make_folder(tmp_path / "images")
    (tmp_path / "images" / "07.png").write_bytes(b"not a png")
    track = own_track(tmp_path, train_examples=7)  # every row of the 12
    with pytest.raises(SpeedrunError, match=r"metadata.jsonl line 8: 07.png is not a readable image"):
        prepare(track, tmp_path / "data", progress=False, text_encoder=hash_encoder(16))
