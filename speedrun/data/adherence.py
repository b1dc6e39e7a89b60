"""Prompt adherence for shapes-v1: the fraction of a caption's attributes an image shows.

Per stated shape, four checks (``ATTRIBUTES``) on the largest 4-connected blob of its colour (nearest
palette colour within ``MAX_COLOUR_DISTANCE``) in its cell, else anywhere: it exists, lies in the cell,
has the size (area -> side through the kind's fill ratio: pixel-centre sampling drops a triangle's thin
apex row, so the box is too coarse) and the kind (ellipse, box or apex-up triangle template of best IoU).
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
from scipy import ndimage

from speedrun.data import shapes
from speedrun.data.shapes import COLOURS, KINDS, SIDE, Shape, ShapeSpec
from speedrun.errors import SpeedrunError

ATTRIBUTES = ("colour", "position", "size", "kind")
# RGB distance beyond which a pixel is no palette colour: pink red/white edges must not count as orange.
MAX_COLOUR_DISTANCE = 100.0
_PALETTE = np.array([*COLOURS.values(), *shapes.NEUTRALS.values()], dtype=np.float32)
_FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}  # of its bounding box
_SIZE_THRESHOLD = (SIDE["small"] + SIDE["large"]) / 2  # side (cell widths) above which a blob is "large"
# Blobs smaller than a quarter of a small triangle are noise.
_MIN_AREA_FRACTION = 0.25 * 0.5 * SIDE["small"] ** 2

_PHRASE = re.compile(
    r"a (?P<size>{}) (?P<colour>{}) (?P<kind>{}) (?P<where>{})".format(
        "|".join(shapes.SIZES), "|".join(COLOURS), "|".join(KINDS),
        "|".join(re.escape(p) for p in sorted(shapes.POSITION_PHRASES.values(), key=len, reverse=True)),
    )
)  # fmt: skip
_POSITION_OF_PHRASE = {phrase: name for name, phrase in shapes.POSITION_PHRASES.items()}


def colour_labels(image: np.ndarray) -> np.ndarray:
    """int (H, W): index into ``COLOURS`` of each pixel's shape colour, -1 for background/none."""
    diff = image[:, :, None, :].astype(np.float32) - _PALETTE
    dist2 = np.einsum("hwkc,hwkc->hwk", diff, diff)
    nearest = dist2.argmin(axis=2)
    close = dist2.min(axis=2) <= MAX_COLOUR_DISTANCE**2
    return np.where(close & (nearest < len(COLOURS)), nearest, -1)


def _cell_bounds(size: int, k: int) -> slice:
    """Pixels whose centres fall in grid band ``k`` (0..2) of an image ``size`` pixels wide."""
    return slice(int(np.ceil(k * size / 3 - 0.5)), int(np.ceil((k + 1) * size / 3 - 0.5)))


def _largest_component(mask: np.ndarray) -> tuple[np.ndarray, int] | None:
    """(component cropped to its bounding box, area in pixels) of the largest 4-connected blob."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    areas = np.bincount(labels.ravel())[1:]
    best = int(areas.argmax()) + 1
    box = ndimage.find_objects(labels, max_label=best)[best - 1]
    return labels[box] == best, int(areas[best - 1])


@lru_cache(maxsize=512)
def _templates(h: int, w: int) -> dict[str, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    # Shapes inscribed in an (h, w) box: scale x so the box is square with half-side h/2.
    xs_scaled = (xs - w / 2) * (h / w) + h / 2
    return {kind: shapes.shape_mask(kind, xs_scaled, ys, h / 2, h / 2, h / 2) for kind in KINDS}


def classify_kind(blob: np.ndarray) -> str:
    """The shape kind whose template best matches (IoU) a blob cropped to its bounding box."""
    templates = _templates(*blob.shape)
    return max(KINDS, key=lambda kind: (blob & templates[kind]).sum() / (blob | templates[kind]).sum())


def check_shapes(image: np.ndarray, spec: ShapeSpec) -> list[dict[str, bool]]:
    """Per stated shape, which of ``ATTRIBUTES`` hold in ``image`` (uint8 (H, W, 3), square)."""
    size = image.shape[0]
    cell = size / 3
    min_area = max(2.0, _MIN_AREA_FRACTION * cell * cell)
    labels = colour_labels(image)
    results = []
    for shape in spec.shapes:
        mask = labels == list(COLOURS).index(shape.colour)
        row, col = divmod(shapes.POSITIONS.index(shape.position), 3)
        found = _largest_component(mask[_cell_bounds(size, row), _cell_bounds(size, col)])
        at_position = found is not None and found[1] >= min_area
        if not at_position:
            found = _largest_component(mask)
        if found is None or found[1] < min_area:
            results.append(dict.fromkeys(ATTRIBUTES, False))
            continue
        blob, area = found
        kind = classify_kind(blob)
        size_ok = (np.sqrt(area / _FILL[kind]) / cell > _SIZE_THRESHOLD) == (shape.size == "large")
        results.append({"colour": True, "position": at_position, "size": size_ok, "kind": kind == shape.kind})
    return results


def score(image: np.ndarray, spec: ShapeSpec) -> float:
    """Fraction in [0, 1] of the stated attributes (4 per shape) that hold in ``image``."""
    checks = check_shapes(np.asarray(image), spec)
    return sum(sum(c.values()) for c in checks) / (len(ATTRIBUTES) * len(checks))


def parse_caption(caption: str) -> ShapeSpec:
    """The spec a shapes-v1 caption states (no background, zero offsets); SpeedrunError outside the grammar."""
    head, sep, last = caption.rpartition(" and ")
    phrases = [*head.split(", "), last] if sep else [caption]
    stated = []
    for phrase in phrases:
        match = _PHRASE.fullmatch(phrase)
        if match is None:
            raise SpeedrunError(f"cannot parse shapes caption {caption!r}: {phrase!r} is not "
                                "'a <small|large> <colour> <circle|square|triangle> <position>'")
        stated.append(Shape(match["kind"], match["colour"], match["size"], _POSITION_OF_PHRASE[match["where"]]))
    return ShapeSpec(tuple(stated))


def score_batch(images: np.ndarray, captions: list[str]) -> np.ndarray:
    """float64 (B,) adherence of uint8 images (B, H, W, 3) to their captions."""
    return np.array([score(img, parse_caption(cap)) for img, cap in zip(images, captions)])
