"""Images that arrive as bytes (uploads, the Python API): checked before they are decoded.

A file is refused, with a one-line ``ImageRejected``, when it is larger than the byte limit,
when its content is not one of the allowed formats (the bytes decide, not a name or a
header), when its header declares more pixels than the pixel limit (a decompression bomb
is refused before one pixel is decoded), or when its data is truncated or corrupt.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from tuwen.data.images import load_image, to_rgb
from tuwen.errors import TuwenError

# Pillow's names for the formats a person uploads; every other decoder stays unused
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


class ImageRejected(TuwenError):
    """An image input that is too large, of a refused type, or not decodable."""

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large  # over a size limit (HTTP 413) rather than malformed


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000   # a 12-MP phone photo passes; 20,000 x 20,000 does not
    formats: tuple[str, ...] = FORMATS


def decode_image(data: bytes, limits: ImageLimits = ImageLimits(),
                 name: str = "image") -> Image.Image:
    """Bytes -> upright 8-bit RGB PIL image (EXIF orientation applied, as for files), or
    ``ImageRejected`` naming ``name``."""
    if not data:
        raise ImageRejected(f"{name}: empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageRejected(f"{name}: {len(data):,} bytes is more than the limit of "
                            f"{limits.max_bytes:,}", too_large=True)
    image = _open(data, limits, name)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageRejected(f"{name}: image data is truncated or corrupt ({err})") from None
    return to_rgb(image)


def _open(data: bytes, limits: ImageLimits, name: str) -> Image.Image:
    """Read the header only, restricted to the allowed decoders, and check the pixel count."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(limits.formats))
    except UnidentifiedImageError:
        raise ImageRejected(f"{name}: not an image of an accepted type "
                            f"({', '.join(f.lower() for f in limits.formats)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageRejected(f"{name}: more pixels than the limit of {limits.max_pixels:,} "
                            f"({err})", too_large=True) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageRejected(f"{name}: cannot read the image header ({err})") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageRejected(f"{name}: {width} x {height} pixels is more than the limit of "
                            f"{limits.max_pixels:,} pixels", too_large=True)
    return image


def open_image(image, limits: ImageLimits, min_side: int) -> Image.Image:
    """A path, bytes or a PIL image -> RGB PIL image (bytes checked against ``limits``; a
    file read at least ``min_side`` pixels on its short side)."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(bytes(image), limits)
    return load_image(image, min_side)
