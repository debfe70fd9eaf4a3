"""Reader for COCO captions annotation files (``captions_train2017.json`` and the like).

The layout is ``images[].{id, file_name}`` plus ``annotations[].{image_id, caption}``, several
annotations per image. Errors follow :mod:`tuwen.data.readers`: a malformed file raises
``DataError`` naming the file, the record's index in its list and the key; an empty caption
or an image without a usable caption is skipped and its reason kept in ``skipped``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuwen.data.readers import (
    _check_unique,
    _field,
    _json_type,
    _top_list,
    caption_problem,
    load_json,
)
from tuwen.data.records import ImageCaptions, ReadResult
from tuwen.errors import DataError


def read_coco_captions(path: str | Path, *, image_root: str | Path | None = None,
                       check_files: bool = True,
                       split: str = "train") -> ReadResult[ImageCaptions]:
    """Read a COCO captions file; every record gets ``split`` (COCO files hold one split).

    Images live at ``image_root / file_name``, ``image_root`` defaulting to the JSON's folder
    (for the official layout pass the image folder, e.g. ``coco/train2017``). Records come in
    the order of ``images``, captions in the order of ``annotations``.
    """
    path = Path(path)
    return coco_captions_from_json(load_json(path), path, image_root=image_root,
                                   check_files=check_files, split=split)


def coco_captions_from_json(doc: Any, path: Path, *, image_root: str | Path | None = None,
                            check_files: bool = True,
                            split: str = "train") -> ReadResult[ImageCaptions]:
    """:func:`read_coco_captions` on an already parsed document (``path`` names it in errors)."""
    images = _top_list(doc, "images", path)
    annotations = _top_list(doc, "annotations", path)
    root = Path(image_root) if image_root is not None else path.parent
    files = _image_files(images, path)
    captions: dict[Any, list[str]] = {image_id: [] for image_id in files}
    result: ReadResult[ImageCaptions] = ReadResult()
    for i, rec in enumerate(annotations):
        image_id, caption = _parse_annotation(_entry(rec, path, i, "annotations"), i, path)
        if image_id not in captions:
            raise DataError(path, f"image_id {image_id!r} is not the id of any record in "
                                  "'images'", index=i, key="annotations.image_id")
        if caption.strip():
            captions[image_id].append(caption.strip())
        else:
            result.skipped.append(f"{path.name} annotations record {i}: empty caption "
                                  f"(image_id {image_id!r})")
    for i, (image_id, file_name) in enumerate(files.items()):
        item = ImageCaptions(image_id, root / file_name, split, tuple(captions[image_id]))
        reason = caption_problem(item, check_files)
        if reason is None:
            result.records.append(item)
        else:
            result.skipped.append(f"{path.name} images record {i}: {reason} "
                                  f"(image_id {image_id!r})")
    return result


def _entry(rec: Any, path: Path, index: int, list_name: str) -> Mapping[str, Any]:
    # readers._record, plus the list's name: a COCO file has two lists of records
    if not isinstance(rec, dict):
        raise DataError(path, f"expected an object, got {_json_type(rec)}", index=index,
                        key=list_name)
    return rec


def _image_files(images: list[Any], path: Path) -> dict[Any, str]:
    """``image id -> file_name`` in file order, ids checked to be unique."""
    files: dict[Any, str] = {}
    seen: dict[Any, int] = {}
    for i, rec in enumerate(images):
        rec = _entry(rec, path, i, "images")
        image_id = _field(rec, "id", (int, str), path, i, label="images.id")
        file_name = _field(rec, "file_name", (str,), path, i, label="images.file_name")
        if not file_name.strip():
            raise DataError(path, "expected a file name, got an empty string", index=i,
                            key="images.file_name")
        _check_unique(seen, image_id, i, path, "images.id")
        files[image_id] = file_name
    return files


def _parse_annotation(rec: Mapping[str, Any], i: int, path: Path) -> tuple[Any, str]:
    return (_field(rec, "image_id", (int, str), path, i, label="annotations.image_id"),
            _field(rec, "caption", (str,), path, i, label="annotations.caption"))


