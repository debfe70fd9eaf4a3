"""Loading images as upright RGB, and turning them into normalised tensors.

Every bad file becomes a ``DataError`` naming it, so a dataset can skip and count it. PIL's
``ImageFile.LOAD_TRUNCATED_IMAGES`` is left off: with it on, a cut-off JPEG decodes silently
with its missing part filled grey, and would be trained on as if it were whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from tuwen.errors import DataError

# Transparent pixels become white, as in transformers' ``convert_to_rgb``, so a
# transparent logo looks the same here as under a Hugging Face image processor.
BACKGROUND = (255, 255, 255)
# Pillow opens 16-bit grayscale PNG/TIFF as one of these; "I" is taken to hold 16-bit values
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def load_image(path: str | Path) -> Image.Image:
    """Read an image file fully and return it as upright 8-bit RGB.

    Alpha (RGBA, LA, transparent palettes) is composited on white; grayscale, palette,
    CMYK and 16-bit images are converted; the EXIF orientation tag is applied.
    """
    path = Path(path)
    _check_file(path)
    with _open(path) as image:
        upright = _upright(image, path)  # a new image, still usable once the file is closed
    return to_rgb(upright)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "image file not found")
    if not path.is_file():
        raise DataError(path, "expected an image file, found a directory")
    if path.stat().st_size == 0:
        raise DataError(path, "image file is empty (0 bytes)")


def _open(path: Path) -> Image.Image:
    """Open and fully decode the pixels, so a damaged file fails here and not later."""
    try:
        image = Image.open(path)
    except UnidentifiedImageError:
        raise DataError(path, "not a recognised image format") from None
    except (Image.DecompressionBombError, OSError) as err:
        raise DataError(path, f"cannot open image: {err}") from None
    try:
        image.load()  # open() only reads the header; load() decodes every pixel
    except Image.DecompressionBombError as err:
        image.close()
        raise DataError(path, f"image too large: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        # PIL reports truncated and corrupt data as OSError, bad PNG chunks as SyntaxError
        image.close()
        raise DataError(path, f"image data is truncated or corrupt ({err})") from None
    return image


def _upright(image: Image.Image, path: Path) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError) as err:  # PIL's EXIF parser raises all three
        raise DataError(path, f"unreadable EXIF orientation ({err})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency composited on ``BACKGROUND``."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT:
        # convert("L") would clip 16-bit values at 255, turning most pictures white
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(wide / 257.0, 0, 255).round().astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> float tensor (3, size, size), as a ViT/CLIP image processor does it.

    The shorter side is resized to ``size`` (bicubic), the centre ``size`` x ``size`` square
    is cut out, and values in [0, 1] are normalised with ``mean`` and ``std`` per channel.
    """

    size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"ImageTransform size must be a positive integer, got {self.size!r}")
        _check_channels("mean", self.mean)
        _check_channels("std", self.std)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"ImageTransform std must be positive, got {self.std!r}")
        # (x / 255 - mean) / std folded into one multiply and one subtract per call
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        object.__setattr__(self, "_scale", 1.0 / (255.0 * std))
        object.__setattr__(self, "_shift", mean / std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = resize_and_crop(to_rgb(image), self.size)
        pixels = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)  # (3, H, W)
        return pixels * self._scale - self._shift


def _check_channels(name: str, values: Sequence[float]) -> None:
    if len(values) != 3:
        raise ValueError(f"ImageTransform {name} needs 3 values (R, G, B), got {values!r}")


def resize_and_crop(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (bicubic, aspect kept), then the centre square."""
    width, height = image.size
    if (width, height) == (size, size):
        return image  # the shapes dataset is stored at training size: skip both steps
    scale = size / min(width, height)
    # max(size, ...) so float rounding never leaves the longer side a pixel short
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))
