"""Scenes of the synthetic shapes dataset: what is in a picture, and how it is drawn.

A scene is 1-3 coloured shapes, each in its own cell of a 3x3 grid, on a dark,
low-saturation textured background. Everything random comes from the ``rng`` passed in,
so a scene depends only on the generator's seed and the image id.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
from PIL import Image, ImageDraw

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")

# Saturated and far apart, so no colour is mistaken for another or for the background.
RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (40, 80, 235),
    "yellow": (240, 225, 30),
    "purple": (150, 40, 205),
    "orange": (250, 135, 20),
}

# Never seen in train/val/test, so test_novel measures compositional generalisation.
# Each colour and each shape here still appears in training with other partners.
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("blue", "circle"),
    ("yellow", "square"),
)

ALL_PAIRS: tuple[tuple[str, str], ...] = tuple(product(COLOURS, SHAPES))
SEEN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p not in HELD_OUT_PAIRS)

GRID = 3
OBJECT_COUNT_PROBS = (0.2, 0.4, 0.4)  # for 1, 2, 3 objects
# Radius as a fraction of the cell side; large is ~1.8x small and still fits its cell.
RADIUS_FRACTION = {"small": 0.2, "large": 0.36}
JITTER_FRACTION = 0.12  # keeps centres in distinct cells strictly ordered left/right, up/down
NOISE_STD = 6.0  # per-pixel, per-channel; small next to the distance between colours
SUPERSAMPLE = 2  # shapes are drawn at 2x and box-filtered down for anti-aliased edges


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene; ``x``, ``y`` and ``radius`` are in output pixels."""

    colour: str
    shape: str
    size: str
    row: int
    col: int
    x: float
    y: float
    radius: float

    def to_json(self) -> dict:
        return {"colour": self.colour, "shape": self.shape, "size": self.size,
                "row": self.row, "col": self.col, "x": round(self.x, 2),
                "y": round(self.y, 2), "radius": round(self.radius, 2)}


def sample_scene(rng: np.random.Generator, image_size: int, *,
                 novel: bool) -> list[ShapeObject]:
    """Objects in reading order; a ``novel`` scene holds at least one held-out pair."""
    n_objects = int(rng.choice(len(OBJECT_COUNT_PROBS), p=OBJECT_COUNT_PROBS)) + 1
    cells = sorted(int(c) for c in rng.choice(GRID * GRID, size=n_objects, replace=False))
    # In a novel scene the other objects may be anything, held-out pairs included.
    pool = ALL_PAIRS if novel else SEEN_PAIRS
    pairs = [pool[rng.integers(len(pool))] for _ in cells]
    if novel:
        pairs[rng.integers(n_objects)] = HELD_OUT_PAIRS[rng.integers(len(HELD_OUT_PAIRS))]
    return [_place(rng, image_size, cell, colour, shape)
            for cell, (colour, shape) in zip(cells, pairs)]


def _place(rng: np.random.Generator, image_size: int, cell: int, colour: str,
           shape: str) -> ShapeObject:
    size = SIZES[rng.integers(len(SIZES))]
    cell_side = image_size / GRID
    radius = RADIUS_FRACTION[size] * cell_side
    row, col = divmod(cell, GRID)
    jitter = rng.uniform(-JITTER_FRACTION, JITTER_FRACTION, size=2) * cell_side
    x = (col + 0.5) * cell_side + float(jitter[0])
    y = (row + 0.5) * cell_side + float(jitter[1])
    return ShapeObject(colour, shape, size, row, col, x, y, radius)


def render_scene(rng: np.random.Generator, objects: list[ShapeObject],
                 image_size: int) -> Image.Image:
    """An RGB picture of the scene: textured background, shapes, light sensor noise."""
    background = Image.fromarray(_background(rng, image_size))
    big_side = image_size * SUPERSAMPLE
    canvas = background.resize((big_side, big_side), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        # A little shading per object so one colour is not a single RGB value.
        shade = rng.uniform(0.88, 1.0)
        fill = tuple(round(c * shade) for c in RGB[obj.colour])
        _draw_shape(draw, obj, fill, SUPERSAMPLE)
    image = canvas.reduce(SUPERSAMPLE)
    # Per-pixel sensor noise over everything, shapes included, so no colour is flat.
    # Triangular (sum of two uniforms) rather than Gaussian: it looks the same and
    # is several times faster to draw, which matters at thousands of images.
    shape = (image_size, image_size, 3)
    uniforms = rng.random(shape, dtype=np.float32) + rng.random(shape, dtype=np.float32)
    noise = (uniforms - 1.0) * (NOISE_STD * np.sqrt(6.0))
    noisy = np.asarray(image, dtype=np.float32) + noise
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Dark grey-brown smooth blotches, as a uint8 (H, W, 3) array."""
    grid = int(rng.integers(2, 6))
    base = rng.uniform(40.0, 95.0)
    lum = base + rng.uniform(-20.0, 20.0, size=(grid, grid, 1))
    warmth = rng.uniform(0.0, 14.0, size=(grid, grid, 1))
    # Warmth pushes red up and blue down a little: brownish, never a saturated hue.
    coarse = lum + warmth * np.array([1.0, 0.3, -0.7])
    coarse_img = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8))
    smooth = coarse_img.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(smooth)


def _draw_shape(draw: ImageDraw.ImageDraw, obj: ShapeObject, fill: tuple[int, ...],
                scale: int) -> None:
    cx, cy, r = obj.x * scale, obj.y * scale, obj.radius * scale
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif obj.shape == "square":
        half = 0.85 * r  # about the circle's area, so size reads the same across shapes
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=fill)
    else:
        # Apex up; the base sits a little high so the centre pixel is well inside.
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.85 * r), (cx - r, cy + 0.85 * r)], fill=fill)
