"""Loading images as upright RGB, and turning them into normalised tensors.

Every bad file becomes a ``DataError`` naming it, so a dataset can skip and count it. PIL's
``ImageFile.LOAD_TRUNCATED_IMAGES`` is left off: with it on, a cut-off JPEG decodes silently
with its missing part filled grey, and would be trained on as if it were whole.

Speed: a JPEG much larger than the model input is decoded at 1/2, 1/4 or 1/8 scale by
libjpeg itself (PIL's ``draft``): a 640x480 COCO photo loads in less than half the CPU time
for a 224-px model (3.4 -> 1.5 ms measured); it is shrunk further anyway, so little is lost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tuwen.errors import DataError

if TYPE_CHECKING:
    import torch

# Transparent pixels become white, as in transformers' ``convert_to_rgb``, so a
# transparent logo looks the same here as under a Hugging Face image processor.
BACKGROUND = (255, 255, 255)
# Pillow opens 16-bit grayscale PNG/TIFF as one of these; "I" is taken to hold 16-bit values
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def load_image(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Read an image file fully and return it as upright 8-bit RGB.

    Alpha (RGBA, LA, transparent palettes) is composited on white; grayscale, palette,
    CMYK and 16-bit images are converted; the EXIF orientation tag is applied. With
    ``min_side`` (a transform's ``min_side``), a JPEG may be decoded at a reduced scale
    whose shorter side is still at least ``min_side`` pixels.
    """
    path = Path(path)
    _check_file(path)
    with _open(path, min_side) as image:
        upright = _upright(image, path)  # a new image, still usable once the file is closed
    return to_rgb(upright)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "image file not found")
    if not path.is_file():
        raise DataError(path, "expected an image file, found a directory")
    if path.stat().st_size == 0:
        raise DataError(path, "image file is empty (0 bytes)")


def _open(path: Path, min_side: int | None = None) -> Image.Image:
    """Open and fully decode the pixels, so a damaged file fails here and not later."""
    try:
        image = Image.open(path)
    except UnidentifiedImageError:
        raise DataError(path, "not a recognised image format") from None
    except (Image.DecompressionBombError, OSError) as err:
        raise DataError(path, f"cannot open image: {err}") from None
    try:
        if min_side and image.format == "JPEG":
            _draft(image, min_side)
        image.load()  # open() only reads the header; load() decodes every pixel
    except Image.DecompressionBombError as err:
        image.close()
        raise DataError(path, f"image too large: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        # PIL reports truncated and corrupt data as OSError, bad PNG chunks as SyntaxError
        image.close()
        raise DataError(path, f"image data is truncated or corrupt ({err})") from None
    return image


def _draft(image: Image.Image, min_side: int) -> None:
    """Ask libjpeg for the smallest of 1/2, 1/4, 1/8 scale that keeps the shorter side at
    least ``min_side``; PIL never goes below the requested size. The same factor on both
    axes, so it holds whatever the EXIF orientation turns the picture into later."""
    width, height = image.size
    factor = min_side / min(width, height)
    if factor <= 0.5:
        image.draft(None, (math.ceil(width * factor), math.ceil(height * factor)))


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
    if image.mode == "La":  # premultiplied: PIL converts it only to LA
        image = image.convert("LA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> float tensor (3, size, size), as a ViT/CLIP image processor does it.

    The shorter side is resized to ``size`` (bicubic), the centre ``size`` x ``size`` square
    is cut out, and values in [0, 1] are normalised with ``mean`` and ``std`` per channel:
    the same numbers as transformers' ``CLIPImageProcessor`` with those settings. This is
    the evaluation transform; ``augment.TrainTransform`` wraps it for training.
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
        # (x / 255 - mean) / std folded into one multiply and one subtract per call, in
        # float32 as numpy arrays: to_tensor (torch) and to_array (numpy, for the torch-free
        # ONNX backend) do the same float32 arithmetic, so their values are bitwise equal
        std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
        object.__setattr__(self, "_scale", np.float32(1.0) / (np.float32(255.0) * std))
        object.__setattr__(self, "_shift", mean / std)

    @classmethod
    def for_model(cls, spec) -> ImageTransform:
        """From anything with ``image_size``, ``image_mean``, ``image_std`` (a ``ModelSpec``):
        the statistics the image encoder was trained with."""
        return cls(spec.image_size, tuple(spec.image_mean), tuple(spec.image_std))

    @property
    def min_side(self) -> int:
        """The shorter side an image needs for full quality (see ``load_image``)."""
        return self.size

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        """``rng`` is ignored: the evaluation transform is deterministic. It is accepted so
        that a dataset can call either transform the same way."""
        return self.to_tensor(resize_and_crop(to_rgb(image), self.size))

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """An RGB image (already at its final size) -> normalised (3, H, W) float32."""
        # uint8 to channels-first before the float conversion: half the time of converting
        # first, and the result is contiguous; the arithmetic (and so every value) is the same
        import torch  # here, not at the top: the ONNX backend reads images without torch

        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()  # (3, H, W)
        return pixels.float().mul_(torch.from_numpy(self._scale)).sub_(
            torch.from_numpy(self._shift))

    def to_array(self, image: Image.Image) -> np.ndarray:
        """``to_tensor`` in numpy: the same (3, H, W) float32 values, without torch."""
        pixels = np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))  # (3, H, W) uint8
        return pixels.astype(np.float32) * self._scale - self._shift

    def array(self, image: Image.Image) -> np.ndarray:
        """``__call__`` in numpy (see ``to_array``)."""
        return self.to_array(resize_and_crop(to_rgb(image), self.size))


def _check_channels(name: str, values: Sequence[float]) -> None:
    if len(values) != 3:
        raise ValueError(f"ImageTransform {name} needs 3 values (R, G, B), got {values!r}")


def resize_and_crop(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (bicubic, aspect kept), then the centre square.

    The longer side is ``int(size * long / short)``, rounded down as in torchvision's
    ``Resize`` and transformers' image processors, so the pixels match theirs exactly.
    """
    width, height = image.size
    if width == 0 or height == 0:
        raise DataError(getattr(image, "filename", "") or "image",
                        f"image has zero size ({width} x {height} pixels)")
    if (width, height) == (size, size):
        return image  # the shapes dataset is stored at training size: skip both steps
    short, long = min(width, height), max(width, height)
    new_long = max(size, int(size * long / short))
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))
