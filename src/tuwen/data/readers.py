"""Readers for the published caption and VQA file formats.

Each reader is strict about structure and lenient about content: a malformed file (bad JSON,
a missing key, a wrong type) raises ``DataError`` naming the file, record and key, because
nothing sensible can be read from it; an unusable sample (an empty caption, a missing image)
is skipped and its reason kept in ``ReadResult.skipped``, so a run can report and bound them.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from tuwen.config.sources import COCO_IMAGE_PATTERN
from tuwen.data.records import ImageCaptions, ReadResult, VQAItem
from tuwen.errors import ConfigError, DataError

_PATTERN_FIELDS = frozenset({"image_id", "subtype"})


# --- JSON and field helpers -------------------------------------------------------------


def load_json(path: str | Path) -> Any:
    """Parse a JSON file, turning every failure into a one-line ``DataError``."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    if not path.is_file():
        raise DataError(path, "expected a file, found a directory")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(path, f"cannot read file: {err.strerror}") from None
    if not raw.strip():
        raise DataError(path, "file is empty, expected JSON")
    try:
        return json.loads(raw)  # bytes in: json detects UTF-8/16/32 itself
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON: {err.msg} at line {err.lineno}, "
                              f"column {err.colno}") from None
    except UnicodeDecodeError as err:
        raise DataError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value, for messages a user can match against the file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    names = {int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _is_kind(value: Any, kinds: tuple[type, ...]) -> bool:
    # bool is an int subclass in Python, but `true` is never a valid id or count in JSON
    return isinstance(value, kinds) and not isinstance(value, bool)


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", str: "a string", list: "a list", dict: "an object"}
    return " or ".join(names[k] for k in kinds)


def _field(rec: Mapping[str, Any], key: str, kinds: tuple[type, ...], path: Path, index: int,
           *, label: str | None = None) -> Any:
    """``rec[key]``, checked to exist and to be one of ``kinds``."""
    if key not in rec:
        raise DataError(path, "missing required key", index=index, key=label or key)
    value = rec[key]
    if not _is_kind(value, kinds):
        raise DataError(path, f"expected {_kind_names(kinds)}, got {_json_type(value)}",
                        index=index, key=label or key)
    return value


def _record(rec: Any, path: Path, index: int) -> Mapping[str, Any]:
    if not isinstance(rec, dict):
        raise DataError(path, f"expected an object, got {_json_type(rec)}", index=index)
    return rec


def _top_list(doc: Any, key: str, path: Path) -> list[Any]:
    """The list under a top-level key, e.g. ``images`` in a Karpathy file."""
    if not isinstance(doc, dict):
        raise DataError(path, f"expected a JSON object at the top level, got {_json_type(doc)}")
    if key not in doc:
        raise DataError(path, "missing the top-level list", key=key)
    if not isinstance(doc[key], list):
        raise DataError(path, f"expected a list, got {_json_type(doc[key])}", key=key)
    return doc[key]


def _check_unique(seen: dict[Any, int], value: Any, index: int, path: Path, key: str) -> None:
    # Duplicates would silently merge or double-count samples in retrieval and VQA scoring
    if value in seen:
        raise DataError(path, f"duplicate {key} {value!r} (first seen in record {seen[value]})",
                        index=index, key=key)
    seen[value] = index


# --- Karpathy split JSON ------------------------------------------------------------------


def read_karpathy(path: str | Path, *, image_root: str | Path | None = None,
                  splits: Iterable[str] | None = None,
                  check_files: bool = True) -> ReadResult[ImageCaptions]:
    """Read a Karpathy split file (``dataset_coco.json``, ``dataset_flickr30k.json``,
    the shapes ``captions.json``).

    ``image_id`` is ``cocoid`` if present, else ``imgid``, else the file name's stem; images
    live at ``image_root / filepath / filename`` with ``image_root`` defaulting to the JSON's
    folder. Karpathy's ``restval`` split is kept as is; ``splits`` keeps only those named.
    """
    path = Path(path)
    images = _top_list(load_json(path), "images", path)
    root = Path(image_root) if image_root is not None else path.parent
    wanted = _split_filter(splits)
    result: ReadResult[ImageCaptions] = ReadResult()
    seen: dict[Any, int] = {}
    for i, rec in enumerate(images):
        item, empty = _parse_karpathy(_record(rec, path, i), i, path, root)
        _check_unique(seen, item.image_id, i, path, "image id")
        if wanted is not None and item.split not in wanted:
            continue
        result.skipped.extend(f"{path.name} record {i}: empty caption (sentence {j})"
                              for j in empty)
        reason = caption_problem(item, check_files)
        if reason is None:
            result.records.append(item)
        else:
            result.skipped.append(f"{path.name} record {i}: {reason}")
    return result


def _split_filter(splits: Iterable[str] | None) -> frozenset[str] | None:
    if splits is None:
        return None
    if isinstance(splits, str):  # splits="train" would otherwise filter by its letters
        return frozenset({splits})
    return frozenset(splits)


def _parse_karpathy(rec: Mapping[str, Any], i: int, path: Path,
                    root: Path) -> tuple[ImageCaptions, list[int]]:
    """One image record, and the indexes of its empty sentences (dropped, to be counted)."""
    filename = _field(rec, "filename", (str,), path, i)
    if not filename.strip():
        raise DataError(path, "expected a file name, got an empty string", index=i,
                        key="filename")
    split = _field(rec, "split", (str,), path, i)
    sentences = _field(rec, "sentences", (list,), path, i)
    filepath = _field(rec, "filepath", (str,), path, i) if "filepath" in rec else ""
    captions, empty = [], []
    for j, sentence in enumerate(sentences):
        if not isinstance(sentence, dict):
            raise DataError(path, f"expected an object, got {_json_type(sentence)}", index=i,
                            key=f"sentences[{j}]")
        raw = _field(sentence, "raw", (str,), path, i, label=f"sentences[{j}].raw")
        if raw.strip():
            captions.append(raw.strip())
        else:
            empty.append(j)
    image_id = _karpathy_image_id(rec, filename, i, path)
    return ImageCaptions(image_id, root / filepath / filename, split, tuple(captions)), empty


def _karpathy_image_id(rec: Mapping[str, Any], filename: str, i: int, path: Path) -> int | str:
    # COCO files carry both ids and cocoid is the one COCO results use; Flickr30k has imgid
    for key in ("cocoid", "imgid"):
        if key in rec:
            return _field(rec, key, (int, str), path, i)
    return Path(filename).stem


def caption_problem(item: ImageCaptions, check_files: bool) -> str | None:
    """Why an image with its captions cannot be used, or None (Karpathy and COCO readers)."""
    if not item.captions:
        return "no non-empty caption"
    if check_files and not item.image_path.is_file():
        return f"image file not found: {item.image_path}"
    return None


# --- VQAv2 questions + annotations --------------------------------------------------------


class _Question(NamedTuple):
    index: int
    question_id: int
    image_id: int | str
    question: str


class _Annotation(NamedTuple):
    index: int
    question_id: int
    image_id: int | str
    question_type: str
    answer_type: str
    multiple_choice_answer: str
    answers: tuple[str, ...]


# Finds a question's image: its path, or why there is none (a skip reason)
_Locator = Callable[[_Question], "Path | str"]


def read_vqav2(questions_path: str | Path, annotations_path: str | Path, *,
               image_pattern: str = COCO_IMAGE_PATTERN,
               image_root: str | Path | None = None,
               image_map: Mapping[Any, str | Path] | None = None,
               check_files: bool = True) -> ReadResult[VQAItem]:
    """Read a VQAv2 questions file joined with its annotations file.

    Images are found through ``image_map`` (image_id -> path) when given, else by
    ``image_pattern`` formatted with ``image_id`` and ``subtype`` (the questions file's
    ``data_subtype``); relative paths are taken from ``image_root``, by default the
    questions file's folder. The shapes dataset uses ``image_pattern="images/{image_id:06d}.png"``.
    """
    qpath, apath = Path(questions_path), Path(annotations_path)
    qdoc = load_json(qpath)
    questions = [_parse_question(_record(r, qpath, i), i, qpath)
                 for i, r in enumerate(_top_list(qdoc, "questions", qpath))]
    annotations = [_parse_annotation(_record(r, apath, i), i, apath)
                   for i, r in enumerate(_top_list(load_json(apath), "annotations", apath))]
    by_qid = _join(questions, annotations, qpath, apath)
    root = Path(image_root) if image_root is not None else qpath.parent
    locate = (_map_locator(image_map, root) if image_map is not None
              else _pattern_locator(image_pattern, qdoc, qpath, root))
    result: ReadResult[VQAItem] = ReadResult()
    exists: dict[Path, bool] = {}  # ~5 questions share an image; stat each file once
    for q in questions:
        item, reason = _vqa_item(q, by_qid[q.question_id], locate)
        if item is not None and check_files and not _is_file(item.image_path, exists):
            item, reason = None, f"image file not found: {item.image_path}"
        if item is not None:
            result.records.append(item)
        else:
            result.skipped.append(f"{qpath.name} record {q.index}: {reason} "
                                  f"(question_id {q.question_id})")
    return result


def _is_file(path: Path, cache: dict[Path, bool]) -> bool:
    if path not in cache:
        cache[path] = path.is_file()
    return cache[path]


def _parse_question(rec: Mapping[str, Any], i: int, path: Path) -> _Question:
    return _Question(i, _field(rec, "question_id", (int,), path, i),
                     _field(rec, "image_id", (int, str), path, i),
                     _field(rec, "question", (str,), path, i))


def _parse_annotation(rec: Mapping[str, Any], i: int, path: Path) -> _Annotation:
    answers = []
    for j, entry in enumerate(_field(rec, "answers", (list,), path, i)):
        if not isinstance(entry, dict):
            raise DataError(path, f"expected an object, got {_json_type(entry)}", index=i,
                            key=f"answers[{j}]")
        answers.append(_field(entry, "answer", (str,), path, i, label=f"answers[{j}].answer"))
    return _Annotation(i, _field(rec, "question_id", (int,), path, i),
                       _field(rec, "image_id", (int, str), path, i),
                       _field(rec, "question_type", (str,), path, i),
                       _field(rec, "answer_type", (str,), path, i),
                       _field(rec, "multiple_choice_answer", (str,), path, i), tuple(answers))


def _join(questions: list[_Question], annotations: list[_Annotation], qpath: Path,
          apath: Path) -> dict[int, _Annotation]:
    """Annotations by question id, checked to pair one-to-one with the questions."""
    seen_q: dict[Any, int] = {}
    for q in questions:
        _check_unique(seen_q, q.question_id, q.index, qpath, "question_id")
    by_qid: dict[int, _Annotation] = {}
    seen_a: dict[Any, int] = {}
    for a in annotations:
        _check_unique(seen_a, a.question_id, a.index, apath, "question_id")
        by_qid[a.question_id] = a
    unanswered = [q.question_id for q in questions if q.question_id not in by_qid]
    if unanswered:
        raise DataError(apath, f"{len(unanswered)} question(s) of {qpath.name} have no "
                               f"annotation here (first question_id {unanswered[0]})")
    orphans = [a.question_id for a in annotations if a.question_id not in seen_q]
    if orphans:
        raise DataError(qpath, f"{len(orphans)} annotation(s) of {apath.name} have no "
                               f"question here (first question_id {orphans[0]})")
    for q in questions:
        a = by_qid[q.question_id]
        if a.image_id != q.image_id:
            raise DataError(apath, f"image_id {a.image_id!r} differs from the question's "
                                   f"image_id {q.image_id!r} in {qpath.name}",
                            index=a.index, key="image_id")
    return by_qid


def _vqa_item(q: _Question, a: _Annotation,
              locate: _Locator) -> tuple[VQAItem | None, str | None]:
    """The joined item, or the reason it cannot be used."""
    if not q.question.strip():
        return None, "empty question"
    if not a.answers:
        return None, "no answers"
    if not a.multiple_choice_answer.strip():
        return None, "empty multiple_choice_answer"
    image_path = locate(q)
    if isinstance(image_path, str):
        return None, image_path
    return VQAItem(q.question_id, q.image_id, image_path, q.question.strip(), a.answers,
                   a.multiple_choice_answer, a.question_type, a.answer_type), None


def _map_locator(image_map: Mapping[Any, str | Path], root: Path) -> _Locator:
    def locate(q: _Question) -> Path | str:
        # A map read from JSON has string keys while VQAv2 ids are integers: accept both
        found = image_map.get(q.image_id, image_map.get(str(q.image_id)))
        if found is None:
            return f"image_id {q.image_id!r} not in image_map"
        return root / found
    return locate


def _pattern_locator(pattern: str, qdoc: Mapping[str, Any], qpath: Path,
                     root: Path) -> _Locator:
    fields = _pattern_fields(pattern)
    subtype = None
    if "subtype" in fields:
        subtype = qdoc.get("data_subtype")
        if not isinstance(subtype, str):
            raise DataError(qpath, f"image_pattern {pattern!r} needs the questions file's "
                                   f"'data_subtype' string, got {_json_type(subtype)}",
                            key="data_subtype")

    def locate(q: _Question) -> Path:
        try:
            return root / pattern.format(image_id=q.image_id, subtype=subtype)
        except (ValueError, TypeError) as err:
            raise DataError(qpath, f"image_pattern {pattern!r} cannot format image_id "
                                   f"{q.image_id!r}: {err}", index=q.index,
                            key="image_id") from None
    return locate


def _pattern_fields(pattern: str) -> set[str]:
    """The names a pattern uses, checked against the two it may use."""
    try:
        names = {re.split(r"[.\[]", name)[0]
                 for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
    except ValueError as err:
        raise ConfigError(f"image_pattern {pattern!r} is not a format string: {err}") from None
    unknown = names - _PATTERN_FIELDS
    if unknown:
        raise ConfigError(f"image_pattern {pattern!r} uses {sorted(unknown)}; "
                          f"only {{image_id}} and {{subtype}} are available")
    return names
