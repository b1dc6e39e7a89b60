"""The procedural "shapes-v1" dataset: 1-3 coloured shapes on a 3x3 grid, captioned in words.

Example (split, index) is a pure function of a SHA-256 counter stream keyed by
``shapes-v1/<split>/<index>/<attempt>``. Captions name each shape in reading order ("a small red circle at
the top left and a large blue square at the bottom right"); background and offsets are unstated. A caption
hash assigns each caption one split, where alone it may occur (a split redraws until one of its own comes
up). Pixels are sampled at their centres, so adherence can read a scene back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from speedrun.data.shards import SPLITS, combine_digests, example_digest
from speedrun.errors import SpeedrunError

SOURCE_ID = "shapes-v1"
KINDS = ("circle", "square", "triangle")
SIZES = ("small", "large")
# Bounding-box side in cell widths; the margins keep neighbours apart, so the scorer reads cells alone.
SIDE = {"small": 0.6, "large": 0.92}
# Shape colours (RGB); the smallest distance between any two of these and the neutrals is ~90.
COLOURS = {
    "red": (215, 40, 40), "green": (40, 180, 60), "blue": (45, 85, 215), "yellow": (240, 215, 50),
    "purple": (145, 65, 185), "orange": (245, 135, 30),
}  # fmt: skip
# Background colours: greys, far from every shape colour.
NEUTRALS = {"white": (235, 235, 235), "light grey": (175, 175, 175), "dark grey": (80, 80, 80), "black": (25, 25, 25)}
# Cell names in reading order (row-major; index = 3 * row + column) and their caption phrases.
POSITION_PHRASES = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}  # fmt: skip
POSITIONS = tuple(POSITION_PHRASES)
# Caption-space partition: [low, high) percent of the caption hash.
_PARTITION = {"train": (0, 90), "validation": (90, 95), "reference": (95, 100)}
_OFFSET_FRACTION = 0.7  # of the free margin, so a shape never reaches the cell border after rounding
MIN_IMAGE_SIZE = 24


@dataclass(frozen=True, slots=True)
class Shape:
    """One shape; ``offset`` from the cell centre is (dx, dy) in cell widths, x right, y down (unstated)."""

    kind: str
    colour: str
    size: str
    position: str
    offset: tuple[float, float] = (0.0, 0.0)

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.kind} {POSITION_PHRASES[self.position]}"


@dataclass(frozen=True, slots=True)
class ShapeSpec:
    """Shapes in reading order; ``background``: one neutral (plain), two (top, bottom half) or none (parsed)."""

    shapes: tuple[Shape, ...]
    background: tuple[str, ...] = ()

    @property
    def caption(self) -> str:
        *head, last = [s.phrase for s in self.shapes]
        return ", ".join(head) + " and " + last if head else last

    def to_json(self) -> dict[str, Any]:
        shapes = [{**dataclasses.asdict(s), "offset": list(s.offset)} for s in self.shapes]
        return {"shapes": shapes, "background": list(self.background)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShapeSpec:
        shapes = tuple(Shape(**{**d, "offset": tuple(d["offset"])}) for d in data["shapes"])
        return cls(shapes, tuple(data["background"]))


class _Stream:
    """Uniform draws from sha256(key || counter): identical on every platform and version."""

    def __init__(self, key: str) -> None:
        self._key, self._counter, self._buffer = key.encode(), 0, b""

    def _u64(self) -> int:
        if len(self._buffer) < 8:
            self._buffer += hashlib.sha256(self._key + self._counter.to_bytes(8, "little")).digest()
            self._counter += 1
        value = int.from_bytes(self._buffer[:8], "little")
        self._buffer = self._buffer[8:]
        return value

    def below(self, n: int) -> int:
        # Modulo bias is n / 2**64: irrelevant for n < 100.
        return self._u64() % n

    def uniform(self) -> float:
        """A float in [0, 1) with 53 random bits."""
        return (self._u64() >> 11) * 2.0**-53


def split_of_caption(caption: str) -> str:
    """The only split whose examples may carry ``caption`` (a fixed hash partition)."""
    digest = hashlib.sha256(f"{SOURCE_ID}/partition/{caption}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "little") % 100
    return next(split for split, (low, high) in _PARTITION.items() if low <= bucket < high)


def _draw_shapes(stream: _Stream) -> tuple[Shape, ...]:
    count = 1 + stream.below(3)
    free = list(range(len(POSITIONS)))
    cells = [free.pop(stream.below(len(free))) for _ in range(count)]
    shapes = []
    for cell in sorted(cells):
        kind = KINDS[stream.below(len(KINDS))]
        colour = list(COLOURS)[stream.below(len(COLOURS))]
        size = SIZES[stream.below(len(SIZES))]
        margin = (1.0 - SIDE[size]) / 2 * _OFFSET_FRACTION
        offset = ((2 * stream.uniform() - 1) * margin, (2 * stream.uniform() - 1) * margin)
        shapes.append(Shape(kind, colour, size, POSITIONS[cell], offset))
    return tuple(shapes)


def sample_spec(split: str, index: int) -> ShapeSpec:
    """The scene of example ``index`` of ``split``: deterministic, independent of other indices."""
    if split not in SPLITS:
        raise SpeedrunError(f"unknown split '{split}' for dataset {SOURCE_ID}; splits are {list(SPLITS)}")
    for attempt in itertools.count():
        stream = _Stream(f"{SOURCE_ID}/{split}/{index}/{attempt}")
        shapes = _draw_shapes(stream)
        if split_of_caption(ShapeSpec(shapes).caption) == split:
            break
    neutrals = list(NEUTRALS)
    first = neutrals.pop(stream.below(len(neutrals)))
    background = (first,) if stream.below(2) == 0 else (first, neutrals[stream.below(len(neutrals))])
    return ShapeSpec(shapes, background)


def shape_mask(kind: str, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, half: float) -> np.ndarray:
    """Which sample points lie inside a shape of half-side ``half`` at (cx, cy); triangles stand on the box's base."""
    dx, dy = xs - cx, ys - cy
    if kind == "circle":
        return dx * dx + dy * dy <= half * half
    if kind == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    return (dy <= half) & (np.abs(dx) <= (dy + half) / 2)  # triangle


def _footprint(shape: Shape, size: int) -> tuple[slice, slice, np.ndarray]:
    """Rows and columns of ``shape``'s bounding box in a ``size``-pixel image, and which of those pixels it covers."""
    cell = size / 3
    row, col = divmod(POSITIONS.index(shape.position), 3)
    cx = (col + 0.5 + shape.offset[0]) * cell
    cy = (row + 0.5 + shape.offset[1]) * cell
    half = SIDE[shape.size] * cell / 2
    # Only the shape's bounding box needs testing; pixel (i, j) has its centre at (j+.5, i+.5).
    r0, r1 = max(0, int(cy - half) - 1), min(size, int(cy + half) + 2)
    c0, c1 = max(0, int(cx - half) - 1), min(size, int(cx + half) + 2)
    ys, xs = np.mgrid[r0:r1, c0:c1] + 0.5
    return slice(r0, r1), slice(c0, c1), shape_mask(shape.kind, xs, ys, cx, cy, half)


def render(spec: ShapeSpec, size: int) -> np.ndarray:
    """The scene as a uint8 (size, size, 3) RGB image, each pixel sampled at its centre."""
    if size < MIN_IMAGE_SIZE:
        raise SpeedrunError(f"{SOURCE_ID} needs image_size >= {MIN_IMAGE_SIZE} pixels, got {size}")
    image = np.full((size, size, 3), NEUTRALS[spec.background[0]], dtype=np.uint8)
    if len(spec.background) == 2:
        image[size // 2 :] = NEUTRALS[spec.background[1]]
    for shape in spec.shapes:
        rows, cols, covered = _footprint(shape, size)
        image[rows, cols][covered] = COLOURS[shape.colour]
    return image


def shape_map(spec: ShapeSpec, size: int) -> np.ndarray:
    """int8 (size, size): the index in ``spec.shapes`` of the shape :func:`render` paints at each pixel, else -1."""
    out = np.full((size, size), -1, dtype=np.int8)
    for k, shape in enumerate(spec.shapes):
        rows, cols, covered = _footprint(shape, size)
        out[rows, cols][covered] = k
    return out


def example(split: str, index: int, size: int) -> tuple[np.ndarray, str, ShapeSpec]:
    """(image uint8 (size, size, 3), caption, spec) of example ``index`` of ``split``."""
    spec = sample_spec(split, index)
    return render(spec, size), spec.caption, spec


def examples(split: str, start: int, count: int, size: int) -> tuple[np.ndarray, list[str], list[ShapeSpec]]:
    """Examples ``start .. start+count-1``: images uint8 (count, size, size, 3), captions, specs."""
    images, captions, specs = zip(*(example(split, start + i, size) for i in range(count)))
    return np.stack(images), list(captions), list(specs)


def split_definition_hash(split: str, n: int, size: int) -> str:
    """The definition hash prepare records for the first ``n`` examples of ``split`` at ``size`` (split_hashes)."""
    pairs = (example(split, index, size)[:2] for index in range(n))
    return combine_digests(b"".join(example_digest(i, caption, image) for i, (image, caption) in enumerate(pairs)))
