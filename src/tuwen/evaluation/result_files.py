"""Readers for what ``tuwen score`` is given: result files of any model and their references.

Same contract as :mod:`tuwen.data.readers`: anything malformed raises a one-line ``DataError``
naming the file, the record index and the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuwen.data.coco import coco_captions_from_json
from tuwen.data.readers import (
    _check_unique,
    _field,
    _join,
    _json_type,
    _parse_annotation,
    _parse_question,
    _record,
    _top_list,
    load_json,
    read_karpathy,
)
from tuwen.errors import DataError


@dataclass
class ResultFile:
    """A results list ``[{id_key: ..., value_key: ...}]``: values by id, in file order."""

    path: Path
    values: dict[Any, str]
    index: dict[Any, int]  # id -> record index, for error messages


def read_results(path: str | Path, id_key: str, value_key: str,
                 id_kinds: tuple[type, ...]) -> ResultFile:
    """A COCO-style results file: a JSON list of objects, one per id (no duplicates)."""
    path = Path(path)
    doc = load_json(path)
    if not isinstance(doc, list):
        raise DataError(path, f'expected a JSON list of {{"{id_key}", "{value_key}"}} '
                              f"objects, got {_json_type(doc)}")
    if not doc:
        raise DataError(path, "the results list is empty")
    values: dict[Any, str] = {}
    index: dict[Any, int] = {}
    for i, rec in enumerate(doc):
        rec = _record(rec, path, i)
        key = _field(rec, id_key, id_kinds, path, i)
        _check_unique(index, key, i, path, id_key)
        values[key] = _field(rec, value_key, (str,), path, i)
    return ResultFile(path, values, index)


def read_caption_results(path: str | Path) -> ResultFile:
    """COCO caption results ``[{"image_id", "caption"}]``."""
    return read_results(path, "image_id", "caption", (int, str))


def read_vqa_results(path: str | Path) -> ResultFile:
    """VQAv2 results ``[{"question_id", "answer"}]``."""
    return read_results(path, "question_id", "answer", (int,))


# --- caption references -------------------------------------------------------------------


@dataclass
class CaptionReferences:
    path: Path
    format: str                       # "coco" or "karpathy"
    split: str | None                 # the Karpathy split read, or the label given for COCO
    captions: dict[Any, list[str]]    # image id -> its reference captions, file order
    skipped: list[str] = field(default_factory=list)


def read_caption_references(path: str | Path, split: str | None = None) -> CaptionReferences:
    """COCO captions JSON (has ``annotations``) or Karpathy JSON (``images[].sentences``).

    A Karpathy file holds every split, so only ``split`` (default ``"test"``) is read; a COCO
    file is one split already and ``split`` is only a label for the protocol. Image ids are
    the readers' (COCO ``id``; Karpathy ``cocoid``, else ``imgid``, else the file stem).
    """
    path = Path(path)
    doc = load_json(path)
    if isinstance(doc, dict) and "annotations" in doc:
        result = coco_captions_from_json(doc, path, check_files=False, split=split or "")
        fmt = "coco"
    elif isinstance(doc, dict) and "images" in doc:
        split = split or "test"
        result = read_karpathy(path, splits=[split], check_files=False)
        fmt = "karpathy"
        if not result.records:
            raise DataError(path, f"no image with split {split!r} (splits here: "
                                  f"{_karpathy_splits(doc)})")
    else:
        raise DataError(path, "expected COCO captions (top-level 'annotations' and 'images') "
                              "or Karpathy JSON (top-level 'images' with 'sentences')")
    captions = {r.image_id: list(r.captions) for r in result.records}
    return CaptionReferences(path, fmt, split, captions, result.skipped)


def _karpathy_splits(doc: Mapping[str, Any]) -> list[str]:
    images = doc.get("images")
    records = images if isinstance(images, list) else []
    return sorted({r["split"] for r in records
                   if isinstance(r, dict) and isinstance(r.get("split"), str)})


# --- VQAv2 questions + annotations --------------------------------------------------------


@dataclass
class VQAGroundTruth:
    questions: list[dict]      # questions[] records as in the file
    annotations: list[dict]    # annotations[] records as in the file (answers incl. answer_id)
    split: str | None          # the questions file's data_subtype, e.g. "val2014"


def read_vqa_ground_truth(questions_path: str | Path,
                          annotations_path: str | Path) -> VQAGroundTruth:
    """A VQAv2 questions + annotations pair, checked to match one-to-one.

    The annotation records are kept whole: the official evaluation leaves an annotator out
    by comparing whole answer records (``answer_id`` included), so they are scored as read.
    """
    qpath, apath = Path(questions_path), Path(annotations_path)
    qdoc = load_json(qpath)
    raw_questions = [_record(r, qpath, i)
                     for i, r in enumerate(_top_list(qdoc, "questions", qpath))]
    raw_annotations = [_record(r, apath, i)
                       for i, r in enumerate(_top_list(load_json(apath), "annotations", apath))]
    questions = [_parse_question(r, i, qpath) for i, r in enumerate(raw_questions)]
    annotations = [_parse_annotation(r, i, apath) for i, r in enumerate(raw_annotations)]
    for a in annotations:
        if not a.answers:
            raise DataError(apath, "expected the annotators' answers, got an empty list",
                            index=a.index, key="answers")
    _join(questions, annotations, qpath, apath)
    subtype = qdoc.get("data_subtype")
    return VQAGroundTruth([dict(r) for r in raw_questions], [dict(r) for r in raw_annotations],
                          subtype if isinstance(subtype, str) else None)


# --- retrieval ----------------------------------------------------------------------------

_GROUND_TRUTH_KEYS = ("text_image", "image_ids", "split")


@dataclass
class RetrievalGroundTruth:
    text_image: list[int]          # image row of each text column of the similarity matrix
    image_ids: list[Any] | None    # optional id of each image row
    split: str | None


def read_similarities(path: str | Path) -> np.ndarray:
    """A 2-D numeric ``.npy`` array ``(n_images, n_texts)`` (never unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        sim = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise DataError(path, f"not a plain numeric .npy array: {err}") from None
    except OSError as err:
        raise DataError(path, f"cannot read a .npy array: {err}") from None
    if not isinstance(sim, np.ndarray):
        raise DataError(path, "expected one array saved with numpy.save (.npy), "
                              "got an .npz archive")
    if sim.dtype.kind not in "fiu":
        raise DataError(path, f"expected numbers, got an array of dtype {sim.dtype}")
    if sim.ndim != 2 or 0 in sim.shape:
        raise DataError(path, f"expected a non-empty 2-D array (n_images, n_texts), "
                              f"got shape {sim.shape}")
    if np.isnan(sim).any():
        row, col = np.argwhere(np.isnan(sim))[0]
        raise DataError(path, f"similarity [{row}, {col}] is NaN")
    return sim.astype(np.float64, copy=False)


def read_retrieval_ground_truth(path: str | Path, shape: tuple[int, int]) -> RetrievalGroundTruth:
    """``{"text_image": [...], "image_ids"?: [...], "split"?: "..."}`` for a similarity
    matrix of ``shape`` (n_images, n_texts): ``text_image[j]`` is the image row of text ``j``."""
    path = Path(path)
    doc = load_json(path)
    if not isinstance(doc, dict):
        raise DataError(path, f"expected a JSON object with 'text_image', got {_json_type(doc)}")
    unknown = sorted(set(doc) - set(_GROUND_TRUTH_KEYS))
    if unknown:
        raise DataError(path, f"unknown key (expected {', '.join(_GROUND_TRUTH_KEYS)})",
                        key=unknown[0])
    owner = _index_list(doc, path, shape)
    image_ids = _image_ids(doc, path, shape[0])
    split = doc.get("split")
    if split is not None and not isinstance(split, str):
        raise DataError(path, f"expected a string, got {_json_type(split)}", key="split")
    return RetrievalGroundTruth(owner, image_ids, split)


def _index_list(doc: Mapping[str, Any], path: Path, shape: tuple[int, int]) -> list[int]:
    n_images, n_texts = shape
    owner = doc.get("text_image")
    if not isinstance(owner, list):
        problem = ("missing required key" if "text_image" not in doc
                   else f"expected a list of image indices, got {_json_type(owner)}")
        raise DataError(path, problem, key="text_image")
    if len(owner) != n_texts:
        hint = (" (is the matrix saved as (n_texts, n_images)? it must be (n_images, n_texts))"
                if len(owner) == n_images else "")
        raise DataError(path, f"has {len(owner)} texts but the similarity matrix has "
                              f"{n_texts} text columns{hint}", key="text_image")
    for j, i in enumerate(owner):
        if not isinstance(i, int) or isinstance(i, bool):
            raise DataError(path, f"expected an image index, got {_json_type(i)}", index=j,
                            key="text_image")
        if not 0 <= i < n_images:
            raise DataError(path, f"image index {i} outside 0..{n_images - 1} (the similarity "
                                  f"matrix has {n_images} image rows)", index=j, key="text_image")
    uncaptioned = sorted(set(range(n_images)) - set(owner))
    if uncaptioned:
        raise DataError(path, f"{len(uncaptioned)} image row(s) have no text (first: row "
                              f"{uncaptioned[0]}), so image-to-text recall is undefined for "
                              "them", key="text_image")
    return owner


def _image_ids(doc: Mapping[str, Any], path: Path, n_images: int) -> list[Any] | None:
    ids = doc.get("image_ids")
    if ids is None:
        return None
    if not isinstance(ids, list) or len(ids) != n_images:
        got = f"{len(ids)} ids" if isinstance(ids, list) else _json_type(ids)
        raise DataError(path, f"expected a list of {n_images} image ids (one per row), "
                              f"got {got}", key="image_ids")
    for j, image_id in enumerate(ids):
        if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
            raise DataError(path, f"expected an integer or a string, got "
                                  f"{_json_type(image_id)}", index=j, key="image_ids")
    return ids
