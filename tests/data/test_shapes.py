"""The procedural shapes-v1 dataset: determinism, grammar, disjoint splits, split hashes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from speedrun.data import shapes
from speedrun.data.adherence import parse_caption, score
from speedrun.errors import SpeedrunError


def test_examples_are_pure_functions_of_split_and_index():
    image, caption, spec = shapes.example("train", 7, 32)
    images, captions, specs = shapes.examples("train", 5, 4, 32)
    assert np.array_equal(images[2], image) and captions[2] == caption and specs[2] == spec
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3)


def test_scene_rules_and_caption_grammar():
    _, captions, specs = shapes.examples("train", 0, 300, 32)
    counts = set()
    for caption, spec in zip(captions, specs):
        positions = [s.position for s in spec.shapes]
        assert len(set(positions)) == len(positions), "two shapes share a cell"
        assert positions == sorted(positions, key=shapes.POSITIONS.index)
        assert 1 <= len(spec.background) <= 2 and set(spec.background) <= set(shapes.NEUTRALS)
        counts.add(len(spec.shapes))
        assert parse_caption(caption).caption == caption
        assert shapes.ShapeSpec.from_json(spec.to_json()) == spec
    assert counts == {1, 2, 3}
    assert captions[0].startswith("a ") and all(c.count(" a ") == len(s.shapes) - 1 for c, s in zip(captions, specs))


def test_splits_are_disjoint():
    """No caption (so no caption-and-image pair) of the first examples occurs in two splits."""
    seen: dict[str, set[str]] = {}
    pairs: dict[str, set[bytes]] = {}
    for split, n in (("train", 3000), ("validation", 1000), ("reference", 1000)):
        images, captions, _ = shapes.examples(split, 0, n, 32)
        assert all(shapes.split_of_caption(c) == split for c in captions)
        seen[split] = set(captions)
        pairs[split] = {hashlib.sha256(c.encode() + img.tobytes()).digest() for c, img in zip(captions, images)}
    for a, b in (("train", "validation"), ("train", "reference"), ("validation", "reference")):
        assert not seen[a] & seen[b], f"{a} and {b} share captions"
        assert not pairs[a] & pairs[b]


def test_renders_at_64_and_scores_perfectly():
    images, _, specs = shapes.examples("reference", 0, 40, 64)
    assert images.shape == (40, 64, 64, 3)
    assert all(score(img, spec) == 1.0 for img, spec in zip(images, specs))


def test_split_definition_hash_is_stable_and_specific():
    h = shapes.split_definition_hash("validation", 16, 32)
    assert h == shapes.split_definition_hash("validation", 16, 32)
    assert len(h) == 64
    assert h != shapes.split_definition_hash("reference", 16, 32)
    assert h != shapes.split_definition_hash("validation", 16, 64)
    assert h != shapes.split_definition_hash("validation", 15, 32)


def test_bad_arguments_name_the_problem():
    with pytest.raises(SpeedrunError, match="unknown split 'test'"):
        shapes.sample_spec("test", 0)
    with pytest.raises(SpeedrunError, match="image_size >= 24"):
        shapes.example("train", 0, 16)
