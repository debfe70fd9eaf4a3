"""Image folders: one sub-folder per class (torchvision's ImageFolder layout).

``root/<class>/<image>`` -> one ``ImageClass`` per image file, the class name being the folder's
name with underscores read as spaces ("golden_retriever" -> "golden retriever"). Files that
are not images are skipped and counted; an empty or missing folder is an error.
"""

from __future__ import annotations

from pathlib import Path

from tuwen.data.records import ImageClass, ReadResult
from tuwen.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def class_name(folder: str) -> str:
    return folder.replace("_", " ").strip()


def read_image_folder(root: Path, split: str) -> ReadResult[ImageClass]:
    """Every image under ``root/<class>/``, sorted by class then file name."""
    if not root.is_dir():
        raise DataError(root, "image folder not found (expected one sub-folder per class)")
    out: ReadResult[ImageClass] = ReadResult()
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(root, "no class folders (expected root/<class name>/<image files>)")
    for folder in classes:
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                out.skipped.append(f"{path}: not an image file ({path.suffix or 'no suffix'})")
                continue
            image_id = f"{folder.name}/{path.stem}"
            out.records.append(ImageClass(image_id, path, split, class_name(folder.name)))
    if not out.records:
        raise DataError(root, "no image files in the class folders")
    return out
