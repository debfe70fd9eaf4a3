"""Images that live inside another file: a tar shard member, a Hugging Face dataset row.

Training streams them straight from their bytes (:func:`decode_image`). Everything that wants
a file (evaluation, the doctor, map-style training on an HF dataset) gets one from
:func:`store_image`: the bytes written once under the cache folder, named by their content
hash, so the same picture is one file however often it appears.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from tuwen.data.images import _draft, to_rgb  # the file loader's JPEG draft rule
from tuwen.errors import DataError

# The leading bytes of the formats img2dataset and HF datasets write
_MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"GIF8", ".gif"),
          (b"BM", ".bmp"))


def content_hash(data: bytes) -> str:
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def sniff_suffix(data: bytes) -> str:
    """A file suffix for image bytes (PIL reads by content; the suffix is for people)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((suffix for magic, suffix in _MAGIC if data.startswith(magic)), ".img")


def store_image(cache_dir: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``cache_dir/ab/abcdef....ext`` unless it is there; return the path."""
    digest = content_hash(data)
    path = Path(cache_dir) / digest[:2] / f"{digest}{sniff_suffix(data)}"
    if path.is_file() and path.stat().st_size == len(data):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def decode_image(data: bytes, name: str, min_side: int | None = None) -> Image.Image:
    """Image bytes -> upright 8-bit RGB, fully decoded, as ``images.load_image`` does for files
    (``min_side``: a JPEG may be decoded at a reduced scale, its shorter side still at least
    that). ``name`` (e.g. ``shard-00001.tar:000123``) is what a ``DataError`` names.
    """
    if not data:
        raise DataError(name, "image is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
        if min_side and image.format == "JPEG":
            _draft(image, min_side)
        image.load()
    except UnidentifiedImageError:
        raise DataError(name, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(name, f"image data is truncated or corrupt ({err})") from None
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(name, f"unreadable EXIF orientation ({err})") from None
    return to_rgb(image)
