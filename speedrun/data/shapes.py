"""The procedural "shapes-v1" dataset: coloured shapes on a 3x3 grid, captioned in words.

Every example is a pure function of (split, index): the random draws come from a SHA-256 counter
stream keyed by ``shapes-v1/<split>/<index>/<attempt>``, so the data is identical on every machine,
Python and numpy version, and an example never depends on any other.

A scene has 1-3 shapes (circle, square, triangle), each ``small`` or ``large``, in one of six
clearly separable colours, in distinct cells of a 3x3 grid, on a plain or two-tone (top half /
bottom half) neutral background. The caption names every shape in reading order of its cell:
``"a small red circle at the top left and a large blue square at the bottom right"``. The
background and a small offset of each shape inside its cell are free variation the caption does
not state.

Disjoint splits: the space of captions is partitioned by a hash of the caption text
(``split_of_caption``): 90% of captions belong to train, 5% to validation, 5% to reference. A
split draws specs until one whose caption belongs to it comes up (each retry uses the next
``attempt`` key). So no caption, and hence no (caption, image) pair, ever appears in two splits,
and the evaluator's reference captions are compositions the model never saw in training.

Rendering samples each pixel at its centre (no anti-aliasing), so every pixel has an exact
palette colour and ``speedrun.data.adherence`` can read the scene back analytically.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from speedrun.data.shards import combine_digests, example_digest
from speedrun.errors import SpeedrunError

SOURCE_ID = "shapes-v1"
SPLITS = ("train", "validation", "reference")
KINDS = ("circle", "square", "triangle")
SIZES = ("small", "large")
# Side of a shape's bounding box in cell widths. Both leave a margin inside the cell, so shapes in
# neighbouring cells never touch and the scorer can analyse each cell on its own.
SIDE = {"small": 0.6, "large": 0.92}
# Shape colours (RGB); the smallest distance between any two of these and the neutrals is ~90.
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 180, 60),
    "blue": (45, 85, 215),
    "yellow": (240, 215, 50),
    "purple": (145, 65, 185),
    "orange": (245, 135, 30),
}
# Background colours: greys, far from every shape colour.
NEUTRALS = {
    "white": (235, 235, 235),
    "light grey": (175, 175, 175),
    "dark grey": (80, 80, 80),
    "black": (25, 25, 25),
}
# Cell names in reading order (row-major); index = 3 * row + column.
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
POSITION_PHRASES = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}
# Caption-space partition, in percent of the caption hash: [0, 90) train, [90, 95) validation,
# [95, 100) reference.
_PARTITION = {"train": (0, 90), "validation": (90, 95), "reference": (95, 100)}
# Offsets inside a cell use at most this fraction of the free margin, so a shape never reaches
# the cell border even after pixel rounding.
_OFFSET_FRACTION = 0.7
MIN_IMAGE_SIZE = 24


@dataclass(frozen=True, slots=True)
class Shape:
    """One shape: its kind, colour, size class, grid cell and offset from the cell centre.

    ``offset`` is (dx, dy) in cell widths, x to the right and y downwards; the caption does not
    state it.
    """

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
    """A scene: shapes in reading order of their cells, and the background.

    ``background`` is one neutral name (plain) or two (top half, bottom half); empty when unknown
    (a spec parsed from a caption, which does not state the background).
    """

    shapes: tuple[Shape, ...]
    background: tuple[str, ...] = ()

    @property
    def caption(self) -> str:
        phrases = [s.phrase for s in self.shapes]
        if len(phrases) == 1:
            return phrases[0]
        return ", ".join(phrases[:-1]) + " and " + phrases[-1]

    def to_json(self) -> dict[str, Any]:
        return {
            "shapes": [
                {"kind": s.kind, "colour": s.colour, "size": s.size, "position": s.position, "offset": list(s.offset)}
                for s in self.shapes
            ],
            "background": list(self.background),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShapeSpec:
        shapes = tuple(
            Shape(d["kind"], d["colour"], d["size"], d["position"], tuple(d.get("offset", (0.0, 0.0))))
            for d in data["shapes"]
        )
        return cls(shapes, tuple(data.get("background", ())))


class _Stream:
    """Uniform draws from sha256(key || counter): identical on every platform and version."""

    def __init__(self, key: str) -> None:
        self._key = key.encode()
        self._counter = 0
        self._buffer = b""

    def _u64(self) -> int:
        if len(self._buffer) < 8:
            block = hashlib.sha256(self._key + self._counter.to_bytes(8, "little")).digest()
            self._buffer += block
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
    for split, (low, high) in _PARTITION.items():
        if low <= bucket < high:
            return split
    raise AssertionError("partition does not cover [0, 100)")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise SpeedrunError(f"unknown split '{split}' for dataset {SOURCE_ID}; splits are {list(SPLITS)}")


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
    _check_split(split)
    if index < 0:
        raise SpeedrunError(f"example index must be >= 0, got {index}")
    attempt = 0
    while True:
        stream = _Stream(f"{SOURCE_ID}/{split}/{index}/{attempt}")
        shapes = _draw_shapes(stream)
        if split_of_caption(ShapeSpec(shapes).caption) == split:
            break
        attempt += 1
    neutrals = list(NEUTRALS)
    first = neutrals.pop(stream.below(len(neutrals)))
    if stream.below(2) == 0:
        background: tuple[str, ...] = (first,)
    else:
        background = (first, neutrals[stream.below(len(neutrals))])
    return ShapeSpec(shapes, background)


def shape_mask(kind: str, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, half: float) -> np.ndarray:
    """Which sample points (pixel coordinates) lie inside a shape of half-side ``half`` at (cx, cy).

    The triangle is isosceles with its apex at the top centre and its base along the bottom edge
    of the bounding box (it fills half the box; a circle fills pi/4, a square all of it).
    """
    dx, dy = xs - cx, ys - cy
    if kind == "circle":
        return dx * dx + dy * dy <= half * half
    if kind == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if kind == "triangle":
        return (dy <= half) & (np.abs(dx) <= (dy + half) / 2)
    raise SpeedrunError(f"unknown shape kind '{kind}'; kinds are {list(KINDS)}")


def render(spec: ShapeSpec, size: int) -> np.ndarray:
    """The scene as a uint8 (size, size, 3) RGB image, each pixel sampled at its centre."""
    if size < MIN_IMAGE_SIZE:
        raise SpeedrunError(f"{SOURCE_ID} needs image_size >= {MIN_IMAGE_SIZE} pixels, got {size}")
    image = np.empty((size, size, 3), dtype=np.uint8)
    if not spec.background:
        raise SpeedrunError("cannot render a spec without a background (one parsed from a caption?)")
    image[:] = NEUTRALS[spec.background[0]]
    if len(spec.background) == 2:
        image[size // 2 :] = NEUTRALS[spec.background[1]]
    cell = size / 3
    for shape in spec.shapes:
        row, col = divmod(POSITIONS.index(shape.position), 3)
        cx = (col + 0.5 + shape.offset[0]) * cell
        cy = (row + 0.5 + shape.offset[1]) * cell
        half = SIDE[shape.size] * cell / 2
        # Only the shape's bounding box needs testing; pixel (i, j) has its centre at (j+.5, i+.5).
        r0, r1 = max(0, int(cy - half) - 1), min(size, int(cy + half) + 2)
        c0, c1 = max(0, int(cx - half) - 1), min(size, int(cx + half) + 2)
        ys, xs = np.mgrid[r0:r1, c0:c1] + 0.5
        inside = shape_mask(shape.kind, xs, ys, cx, cy, half)
        image[r0:r1, c0:c1][inside] = COLOURS[shape.colour]
    return image


def example(split: str, index: int, size: int) -> tuple[np.ndarray, str, ShapeSpec]:
    """(image uint8 (size, size, 3), caption, spec) of example ``index`` of ``split``."""
    spec = sample_spec(split, index)
    return render(spec, size), spec.caption, spec


def examples(split: str, start: int, count: int, size: int) -> tuple[np.ndarray, list[str], list[ShapeSpec]]:
    """Examples ``start .. start+count-1``: images uint8 (count, size, size, 3), captions, specs."""
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    captions, specs = [], []
    for i in range(count):
        images[i], caption, spec = example(split, start + i, size)
        captions.append(caption)
        specs.append(spec)
    return images, captions, specs


def split_definition_hash(split: str, n: int, size: int) -> str:
    """sha256 of the first ``n`` examples of ``split`` at ``size``: pins a track's split_hashes.

    Equal to what ``speedrun.data.prepare`` records in the manifest for the same split: the hash
    over the per-example digests sha256(index, caption, image bytes), in index order.
    """
    digests = bytearray()
    for index in range(n):
        image, caption, _ = example(split, index, size)
        digests += example_digest(index, caption, image)
    return combine_digests(bytes(digests))
