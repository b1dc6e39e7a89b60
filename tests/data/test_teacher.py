"""The vision teacher prepare trains for tracks with data.teacher: deterministic, from the train split only,
verified like the shards, and REPA's teacher "shapes-encoder" through the unchanged component."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save

from speedrun.components.irepa import IREPA, IREPAParams
from speedrun.components.repa import REPA, REPAParams
from speedrun.components.teachers import load_shapes_encoder, teacher_for
from speedrun.data import shapes, shards, teacher
from speedrun.data.prepare import dataset_definition, prepare
from speedrun.data.source import TrainData
from speedrun.errors import SpeedrunError
from speedrun.protocol import ComponentContext, ContractError
from speedrun.tracks import TeacherTraining, Track, load_track
from speedrun.train import Trainer, TrainOptions

# A few optimizer steps of a narrow encoder: seconds, yet every step of the real training runs.
SMALL_TEACHER = {"steps": 6, "batch_size": 16, "dim": 16, "depth": 1}


def teacher_track(**train: int) -> Track:
    """The smoke track on 128 train examples, with a small teacher; ``train`` replaces train fields."""
    data = load_track("smoke").model_dump(mode="python")
    data["data"] |= {"train_examples": 128, "teacher": SMALL_TEACHER}
    data["train"] |= train
    return Track.model_validate(data)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, int, np.ndarray]]]:
    """(dataset folder, [(name, size, digests) of each split the teacher training was given])."""
    given = []
    real_train = teacher.train

    def spy(spec: TeacherTraining, split: shards.SplitDataset) -> dict[str, torch.Tensor]:
        given.append((split.name, len(split), split.gather_field("digests", np.arange(len(split)))))
        return real_train(spec, split)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(teacher, "train", spy)
        root = prepare(teacher_track(), tmp_path_factory.mktemp("teacher-a"), progress=False)
    return root, given


def copy_of(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / root.name))


def test_the_teacher_is_part_of_the_dataset_definition_only_when_asked_for():
    with_teacher = dataset_definition(teacher_track())
    assert with_teacher["data"]["teacher"] == TeacherTraining(**SMALL_TEACHER).model_dump(mode="json")
    # A track without one keeps the definition (hence folder) its datasets had before the field existed.
    assert "teacher" not in dataset_definition(load_track("smoke"))["data"]


def test_two_fresh_prepares_write_a_bit_identical_trained_teacher(prepared, tmp_path):
    root, _ = prepared
    again = prepare(teacher_track(), tmp_path, progress=False)
    assert again.name == root.name
    first = (root / shards.TEACHER_DIR / shards.TEACHER_FILE).read_bytes()
    assert (again / shards.TEACHER_DIR / shards.TEACHER_FILE).read_bytes() == first
    entry = shards.read_manifest(root).teacher[shards.TEACHER_FILE]
    assert entry.sha256 == hashlib.sha256(first).hexdigest() and entry.bytes == len(first)
    # It was trained: the saved weights are not the seeded initialisation.
    torch.manual_seed(TeacherTraining(**SMALL_TEACHER).seed)
    init = teacher.ShapesEncoder(TeacherTraining(**SMALL_TEACHER)).state_dict()
    saved = load_file(str(root / shards.TEACHER_DIR / shards.TEACHER_FILE))
    assert saved.keys() == init.keys() and not torch.equal(saved["stem.weight"], init["stem.weight"])


def test_the_teacher_bytes_do_not_depend_on_the_callers_thread_count(prepared):
    root, _ = prepared
    split = shards.verify(root).split("train")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # reductions over 3 threads would order sums otherwise than over 1
        weights = teacher.train(TeacherTraining(**SMALL_TEACHER), split)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    assert save(weights) == (root / shards.TEACHER_DIR / shards.TEACHER_FILE).read_bytes()


def test_the_teacher_learns_from_the_train_split_only(prepared):
    root, given = prepared
    train = shards.verify(root).split("train")
    assert [(name, size) for name, size, _ in given] == [("train", 128)]
    np.testing.assert_array_equal(given[0][2], train.gather_field("digests", np.arange(len(train))))


def test_pixel_classes_mark_exactly_the_painted_shape_pixels():
    """Class 0 where the background shows, else the (kind, colour, size) of the shape painted there."""
    images, _, specs = shapes.examples("train", 0, 16, 32)
    classes = teacher.pixel_classes([s.to_json() for s in specs], 32)
    painted = np.any([(images == rgb).all(-1) for rgb in shapes.COLOURS.values()], axis=0)  # none is a neutral
    np.testing.assert_array_equal(classes > 0, painted)
    kinds_colours_sizes = list(itertools.product(shapes.KINDS, shapes.COLOURS, shapes.SIZES))
    for image, spec, where in zip(images, specs, classes):
        for k in np.unique(where[where > 0]):
            kind, colour, size = kinds_colours_sizes[k - 1]
            assert (image[where == k] == shapes.COLOURS[colour]).all()
            assert any((s.kind, s.colour, s.size) == (kind, colour, size) for s in spec.shapes)


def test_a_tampered_teacher_is_refused_naming_the_file(prepared, tmp_path):
    root = copy_of(prepared[0], tmp_path)
    path = root / shards.TEACHER_DIR / shards.TEACHER_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # the last byte of the last tensor: same size, other weights
    path.write_bytes(bytes(data))
    with pytest.raises(SpeedrunError, match=rf"^{path}: sha256 .* does not match the manifest .*the file is corrupted"):
        shards.verify(root)
    with pytest.raises(SpeedrunError, match=rf"^{path}: sha256"):
        load_shapes_encoder(teacher_track(), root, (8, 8), "repa")
    path.write_bytes(bytes(data[:-8]))
    with pytest.raises(SpeedrunError, match=rf"^{path}: {len(data) - 8} bytes but the manifest records {len(data)}"):
        shards.open_dataset(root)


def test_a_dataset_whose_manifest_lost_the_teacher_is_refused(prepared, tmp_path):
    root = copy_of(prepared[0], tmp_path)
    manifest = json.loads((root / shards.MANIFEST_NAME).read_text())
    del manifest["teacher"]
    (root / shards.MANIFEST_NAME).write_text(json.dumps(manifest))
    reason = rf"^{root / shards.MANIFEST_NAME}: records no .*teacher"
    with pytest.raises(SpeedrunError, match=reason):
        prepare(teacher_track(), tmp_path, progress=False)
    with pytest.raises(SpeedrunError, match=reason):
        load_shapes_encoder(teacher_track(), root, (8, 8), "repa")


def test_the_shapes_encoder_is_refused_where_it_cannot_be(prepared):
    ctx = ComponentContext(
        model=None, track=load_track("smoke"), device=torch.device("cpu"), seed=0, token_grid=(8, 8),
        images_available=True, data_dir=prepared[0],
    )  # fmt: skip
    with pytest.raises(ContractError, match="track 'smoke' has none"):
        teacher_for(ctx, "repa", "shapes-encoder", random_init=False)
    ctx = dataclasses.replace(ctx, track=teacher_track())
    with pytest.raises(ContractError, match="random_init_teacher is for the hub teachers"):
        teacher_for(ctx, "repa", "shapes-encoder", random_init=True)
    with pytest.raises(SpeedrunError, match="gave no dataset folder"):
        teacher_for(dataclasses.replace(ctx, data_dir=None), "repa", "shapes-encoder", random_init=False)


def test_repa_and_irepa_train_with_the_shapes_encoder_end_to_end(prepared, tmp_path):
    """The trainer gives REPA and iREPA the trained teacher (named by its file's sha256), which stays frozen
    while the alignment losses train the projectors."""
    root, _ = prepared
    track = teacher_track(steps=3, checkpoint_every=3, untimed_warmup_steps=0)
    repa = REPA(REPAParams(teacher="shapes-encoder", projector_dim=16, weight=0.5))
    irepa = IREPA(IREPAParams(teacher="shapes-encoder", weight=0.5))
    options = TrainOptions(run_dir=tmp_path / "run", seed=0, device="cpu", progress=False)
    trainer = Trainer(track, TrainData.open(track, root.parent), [repa, irepa], options)
    projectors = [{k: v.clone() for k, v in c.projector.state_dict().items()} for c in (repa, irepa)]
    summary = trainer.run()
    assert summary.status == "ok", summary
    sha = shards.read_manifest(root).teacher[shards.TEACHER_FILE].sha256
    saved = load_file(str(root / shards.TEACHER_DIR / shards.TEACHER_FILE))
    for component, before in zip((repa, irepa), projectors):
        assert component.teacher.id == f"shapes-encoder@{sha[:12]}" and component.teacher.dim == SMALL_TEACHER["dim"]
        assert all(torch.equal(component.teacher.network.state_dict()[k], v) for k, v in saved.items())
        assert any(not torch.equal(component.projector.state_dict()[k], v) for k, v in before.items())
    rows = [json.loads(line) for line in (tmp_path / "run" / "train.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "step" in r and "event" not in r]
    # each term is -weight * a mean cosine, in [-weight, weight], logged in its own column
    assert len(steps) == 3 and all(-0.5 <= r[name] <= 0.5 for r in steps for name in ("repa", "irepa"))
