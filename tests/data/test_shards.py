"""Shard format: exact round trip, manifest checks, corruption detection, atomic writes."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest

from speedrun.data import shapes
from speedrun.data.shards import (
    combine_digests,
    open_dataset,
    open_map_budget,
    read_shard_entry,
    sha256_file,
    verify,
    write_shard,
)
from speedrun.errors import SpeedrunError


def test_shard_round_trip_is_exact(tmp_path, rng):
    arrays = {
        "x": rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8),
        "text": rng.normal(size=(5, 4, 6)).astype(np.float16),
        "mask": rng.random((5, 4)) < 0.5,
        "index": np.arange(10, 15, dtype=np.int64),
    }
    documents = {"captions": ["α caption", "", "b", "c", "d"]}
    entry = write_shard(tmp_path, "shard-00002", 10, arrays, documents)
    assert read_shard_entry(tmp_path, "shard-00002") == entry
    assert (entry.start, entry.count) == (10, 5)
    for key, array in arrays.items():
        loaded = np.load(tmp_path / "shard-00002" / f"{key}.npy", mmap_mode="r")
        assert loaded.dtype == array.dtype and np.array_equal(loaded, array)
        assert entry.files[f"{key}.npy"].sha256 == sha256_file(tmp_path / "shard-00002" / f"{key}.npy")
    assert json.loads((tmp_path / "shard-00002" / "captions.json").read_text()) == documents["captions"]


def test_prepared_rows_equal_the_generator(prepared):
    train = prepared.split("train")
    assert len(train) == 300 and len(train.entry.shards) == 5
    indices = np.array([299, 0, 64, 63, 150, 0])
    rows = train.gather(indices)
    images = np.stack([shapes.example("train", int(i), 32)[0] for i in indices])
    assert np.array_equal(rows["x"], images)
    assert np.array_equal(rows["index"], indices)
    assert train.captions(indices) == [shapes.example("train", int(i), 32)[1] for i in indices]
    reference = prepared.split("reference")
    assert reference.specs([3])[0] == shapes.sample_spec("reference", 3).to_json()
    assert np.array_equal(reference.images(np.arange(4)), shapes.examples("reference", 0, 4, 32)[0])
    emb, mask = prepared.null_text()
    assert emb.dtype == np.float32 and mask.dtype == bool and mask.shape == (32,)


def test_manifest_split_hashes_match_the_generator(prepared):
    validation = prepared.split("validation")
    assert validation.entry.definition_hash == shapes.split_definition_hash("validation", 16, 32)
    digests = validation.gather_field("digests", np.arange(len(validation)))
    assert combine_digests(digests.tobytes()) == validation.entry.definition_hash


def test_corrupted_byte_is_detected_and_named(prepared_root, tmp_path):
    copy = tmp_path / prepared_root.name
    shutil.copytree(prepared_root, copy)
    target = copy / "train" / "shard-00001" / "text.npy"
    data = bytearray(target.read_bytes())
    data[-7] ^= 0x01
    target.write_bytes(bytes(data))
    open_dataset(copy)  # sizes still match: only a re-hash can tell
    with pytest.raises(SpeedrunError, match=r"train/shard-00001/text\.npy: sha256"):
        verify(copy)
    target.write_bytes(bytes(data[:-1]))
    with pytest.raises(SpeedrunError, match=r"train/shard-00001/text\.npy: \d+ bytes"):
        open_dataset(copy)


def test_missing_or_foreign_manifest(tmp_path, prepared_root):
    with pytest.raises(SpeedrunError, match="manifest.json: not found"):
        open_dataset(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(prepared_root, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 999
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SpeedrunError, match="format_version 999"):
        open_dataset(copy)


def test_interrupted_shard_write_leaves_nothing_complete(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dumps", fail)
    with pytest.raises(KeyboardInterrupt):
        write_shard(tmp_path, "shard-00000", 0, {"index": np.arange(3)}, {"captions": ["a", "b", "c"]})
    assert read_shard_entry(tmp_path, "shard-00000") is None
    assert not (tmp_path / "shard-00000").exists()


READ_UNDER_A_LOW_FD_LIMIT = """
import os, resource, sys
import numpy as np
from speedrun.data.shards import open_dataset, open_map_budget
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), int(sys.argv[3])))
train = open_dataset(sys.argv[1]).split("train")
rows = train.gather(np.arange(len(train))[::-1])  # every shard, every field
print(len(rows["x"]), train._max_open, len(train._open), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


@pytest.mark.parametrize(("soft", "hard", "budget", "soft_after"), [(24, 24, 8, 24), (24, 4096, 512, 4096)])
def test_open_maps_stay_within_the_file_descriptor_limit(prepared_root, soft, hard, budget, soft_after):
    # Each memory map holds a descriptor: 5 shards x 4 fields would pass a limit of 24 with the
    # interpreter's own. The soft limit is raised to the hard one where allowed, and a split keeps
    # at most an eighth of the limit open.
    out = subprocess.run(
        [sys.executable, "-c", READ_UNDER_A_LOW_FD_LIMIT, str(prepared_root), str(soft), str(hard)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    n, max_open, still_open, soft_now = map(int, out.stdout.split())
    assert (n, max_open, soft_now) == (300, budget, soft_after)
    assert still_open == min(budget, 20)


def test_the_descriptor_budget_is_sized_once_per_process(monkeypatch):
    """The limit is process state: the first split raises it and sizes the budget; later splits (and
    the other splits of a run) get the same budget without another getrlimit or setrlimit."""
    calls = []
    monkeypatch.setattr(resource, "getrlimit", lambda which: calls.append("get") or (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda which, limits: calls.append(("set", limits)))
    open_map_budget.cache_clear()
    try:
        assert [open_map_budget(), open_map_budget()] == [512, 512]  # an eighth of the raised limit
        assert calls == ["get", ("set", (4096, 4096))]
    finally:
        open_map_budget.cache_clear()  # the next caller sizes it from the real limits
