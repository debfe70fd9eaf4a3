"""One token's attention map drawn over the image, as a PNG (the page shows these)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tuwen.data.images import resize_and_crop
from tuwen.evaluation.attention import upsample


def _jet(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB in [0, 1]: blue, cyan, yellow, red (matplotlib's 'jet', piecewise)."""
    v = values[..., None]
    rgb = np.clip(np.concatenate([1.5 - np.abs(4 * v - 3), 1.5 - np.abs(4 * v - 2),
                                  1.5 - np.abs(4 * v - 1)], axis=-1), 0, 1)
    return rgb


def overlay_png(image: Image.Image, heat: np.ndarray, size: int = 256,
                alpha: float = 0.5) -> bytes:
    """``heat`` (rows, cols) upsampled over the centre square the model sees, coloured from
    its own minimum (blue) to its maximum (red), as ``tuwen attention`` colours them."""
    base = np.asarray(resize_and_crop(image.convert("RGB"), size), dtype=np.float32) / 255
    heat = upsample(heat[None], (size, size))[0]
    low, high = float(heat.min()), float(heat.max())
    scaled = (heat - low) / max(high - low, 1e-12)
    mixed = (1 - alpha) * base + alpha * _jet(scaled)
    buf = io.BytesIO()
    Image.fromarray((mixed * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def thumbnail_jpeg(image: Image.Image, size: int) -> bytes:
    image = image.convert("RGB")
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
