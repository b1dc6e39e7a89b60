"""Prompt adherence for shapes-v1: how many stated attributes an image actually shows.

``score(image, spec)`` is the fraction of the caption's attributes that hold: for every stated
shape, four checks (``ATTRIBUTES``):

- ``colour``: a blob of the stated colour exists somewhere in the image;
- ``position``: such a blob lies in the stated grid cell;
- ``size``: its area says small or large as stated;
- ``kind``: its outline is the stated circle, square or triangle.

Everything is analytic, no learned model: each pixel is assigned to the nearest palette colour
(shape colours and neutral backgrounds) if it is within ``MAX_COLOUR_DISTANCE``; the blob for a
stated shape is the largest 4-connected component of its colour inside its cell (shapes never
leave their cell in the data), falling back to the largest such component anywhere in the image.
Kind picks the template (inscribed ellipse, full box, apex-up triangle) with the highest IoU
against the component inside its bounding box. Size turns the area into a side length through that
kind's fill ratio of its bounding box (pi/4, 1, 1/2) and compares it with the midpoint between the
small and large sides (the bounding box itself is too coarse: pixel-centre sampling drops a
triangle's thin apex row).
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
from scipy import ndimage

from speedrun.data.shapes import (
    COLOURS,
    KINDS,
    NEUTRALS,
    POSITION_PHRASES,
    POSITIONS,
    SIDE,
    SIZES,
    Shape,
    ShapeSpec,
    shape_mask,
)
from speedrun.errors import SpeedrunError

ATTRIBUTES = ("colour", "position", "size", "kind")
# A pixel farther than this (Euclidean, RGB units) from every palette colour belongs to nothing:
# blends such as pink edges between red and white must not count as orange.
MAX_COLOUR_DISTANCE = 100.0
_PALETTE = np.array([*COLOURS.values(), *NEUTRALS.values()], dtype=np.float32)
_COLOUR_NAMES = list(COLOURS)
# Fraction of its bounding box each kind fills.
_FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
# Side (in cell widths) above which a blob is "large".
_SIZE_THRESHOLD = (SIDE["small"] + SIDE["large"]) / 2
# Blobs smaller than a quarter of a small triangle (in pixels) are noise.
_MIN_AREA_FRACTION = 0.25 * 0.5 * SIDE["small"] ** 2

_PHRASE = re.compile(
    r"a (?P<size>{}) (?P<colour>{}) (?P<kind>{}) (?P<where>{})".format(
        "|".join(SIZES),
        "|".join(COLOURS),
        "|".join(KINDS),
        "|".join(re.escape(p) for p in sorted(POSITION_PHRASES.values(), key=len, reverse=True)),
    )
)
_POSITION_OF_PHRASE = {phrase: name for name, phrase in POSITION_PHRASES.items()}


def colour_labels(image: np.ndarray) -> np.ndarray:
    """int (H, W): index into ``COLOURS`` of each pixel's shape colour, -1 for background/none."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    diff = image[:, :, None, :].astype(np.float32) - _PALETTE
    dist2 = np.einsum("hwkc,hwkc->hwk", diff, diff)
    nearest = dist2.argmin(axis=2)
    close = dist2.min(axis=2) <= MAX_COLOUR_DISTANCE**2
    return np.where(close & (nearest < len(COLOURS)), nearest, -1)


def _cell_bounds(size: int, k: int) -> slice:
    """Pixels whose centres fall in grid band ``k`` (0..2) of an image ``size`` pixels wide."""
    lo = int(np.ceil(k * size / 3 - 0.5))
    hi = int(np.ceil((k + 1) * size / 3 - 0.5))
    return slice(lo, hi)


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
    return {kind: shape_mask(kind, xs_scaled, ys, h / 2, h / 2, h / 2) for kind in KINDS}


def classify_kind(blob: np.ndarray) -> str:
    """The shape kind whose template best matches (IoU) a blob cropped to its bounding box."""
    best, best_iou = KINDS[0], -1.0
    for kind, template in _templates(*blob.shape).items():
        iou = (blob & template).sum() / (blob | template).sum()
        if iou > best_iou:
            best, best_iou = kind, iou
    return best


def check_shapes(image: np.ndarray, spec: ShapeSpec) -> list[dict[str, bool]]:
    """Per stated shape, which of ``ATTRIBUTES`` hold in ``image`` (uint8 (H, W, 3), square)."""
    size = image.shape[0]
    if image.shape[1] != size:
        raise ValueError(f"expected a square image, got {image.shape}")
    cell = size / 3
    min_area = max(2.0, _MIN_AREA_FRACTION * cell * cell)
    labels = colour_labels(image)
    results = []
    for shape in spec.shapes:
        mask = labels == _COLOUR_NAMES.index(shape.colour)
        row, col = divmod(POSITIONS.index(shape.position), 3)
        in_cell = _largest_component(mask[_cell_bounds(size, row), _cell_bounds(size, col)])
        found = in_cell if in_cell is not None and in_cell[1] >= min_area else None
        at_position = found is not None
        if found is None:
            anywhere = _largest_component(mask)
            found = anywhere if anywhere is not None and anywhere[1] >= min_area else None
        if found is None:
            results.append(dict.fromkeys(ATTRIBUTES, False))
            continue
        blob, area = found
        kind = classify_kind(blob)
        side = np.sqrt(area / _FILL[kind]) / cell
        results.append(
            {
                "colour": True,
                "position": at_position,
                "size": (side > _SIZE_THRESHOLD) == (shape.size == "large"),
                "kind": kind == shape.kind,
            }
        )
    return results


def score(image: np.ndarray, spec: ShapeSpec) -> float:
    """Fraction in [0, 1] of the stated attributes (4 per shape) that hold in ``image``."""
    checks = check_shapes(np.asarray(image), spec)
    return sum(sum(c.values()) for c in checks) / (len(ATTRIBUTES) * len(checks))


def parse_caption(caption: str) -> ShapeSpec:
    """The spec a shapes-v1 caption states (background unknown, offsets zero).

    SpeedrunError if the caption is not in the generator's grammar.
    """
    head, sep, last = caption.rpartition(" and ")
    phrases = [*head.split(", "), last] if sep else [caption]
    shapes = []
    for phrase in phrases:
        match = _PHRASE.fullmatch(phrase)
        if match is None:
            raise SpeedrunError(
                f"cannot parse shapes caption {caption!r}: {phrase!r} is not "
                "'a <small|large> <colour> <circle|square|triangle> <position>'"
            )
        shapes.append(Shape(match["kind"], match["colour"], match["size"], _POSITION_OF_PHRASE[match["where"]]))
    return ShapeSpec(tuple(shapes))


def score_caption(image: np.ndarray, caption: str) -> float:
    """``score`` against the spec parsed from ``caption``."""
    return score(image, parse_caption(caption))


def score_batch(images: np.ndarray, captions: list[str]) -> np.ndarray:
    """float64 (B,) adherence of uint8 images (B, H, W, 3) to their captions."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    return np.array([score_caption(np.asarray(img), cap) for img, cap in zip(images, captions)])
