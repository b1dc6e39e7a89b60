"""The analytic prompt-adherence scorer: its two bounds and its caption parser."""

from __future__ import annotations

import numpy as np
import pytest

from speedrun.data import adherence, shapes
from speedrun.errors import SpeedrunError


@pytest.fixture(scope="module")
def reference_32():
    return shapes.examples("reference", 0, 300, 32)


def test_real_images_score_high(reference_32):
    images, captions, specs = reference_32
    scores = np.array([adherence.score(img, spec) for img, spec in zip(images, specs)])
    assert scores.mean() >= 0.98
    # From captions alone, too.
    assert adherence.score_batch(images[:50], captions[:50]).mean() >= 0.98


def test_shuffled_captions_score_low(reference_32):
    images, captions, _ = reference_32
    shuffled = [captions[(i + 1) % len(captions)] for i in range(len(captions))]
    assert adherence.score_batch(images, shuffled).mean() < 0.5


def test_each_attribute_is_checked():
    spec = shapes.ShapeSpec((shapes.Shape("circle", "red", "large", "center"),), ("white",))
    image = shapes.render(spec, 32)
    assert adherence.score(image, spec) == 1.0
    for changed, field in (("square", "kind"), ("small", "size"), ("top left", "position")):
        stated = shapes.Shape(
            changed if field == "kind" else "circle",
            "red",
            changed if field == "size" else "large",
            changed if field == "position" else "center",
        )
        checks = adherence.check_shapes(image, shapes.ShapeSpec((stated,)))[0]
        assert not checks[field] and sum(checks.values()) == 3, (field, checks)
    blank = shapes.render(shapes.ShapeSpec((), ("white",)), 32)
    assert adherence.score(blank, spec) == 0.0


def test_parse_caption_rejects_other_grammar():
    assert adherence.parse_caption("a small red circle at the top left").shapes[0].position == "top left"
    with pytest.raises(SpeedrunError, match="cannot parse"):
        adherence.parse_caption("a photo of a cat")
    with pytest.raises(SpeedrunError, match="cannot parse"):
        adherence.parse_caption("a small pink circle at the top")
