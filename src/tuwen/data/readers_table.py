"""JSONL and CSV: one row per image-text pair, the format people write by hand.

A row has ``image`` (a path relative to the image root) and ``caption`` (a string),
``captions`` (a list; in CSV one cell, ``|``-separated), or ``question`` + ``answers`` (the
same), or both kinds. Optional: ``image_id`` (default: the image path), ``split`` (rows of
other splits are left out), ``question_id`` (default: the row index), ``question_type``,
``answer_type``. Rows of one image are grouped into one captioned image.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tuwen.data.readers import _check_unique, _field, _json_type
from tuwen.data.records import ImageCaptions, Labelled, VQAItem
from tuwen.errors import DataError


def read_jsonl(path: str | Path, *, image_root: str | Path | None = None,
               splits: Iterable[str] | None = None, split: str = "",
               check_files: bool = True) -> Labelled:
    """Read a JSON-lines file; ``image_root`` defaults to the file's folder.

    ``splits`` keeps only rows whose ``split`` is one of them (rows without one are kept);
    ``split`` is the split recorded for rows without one.
    """
    path = Path(path)
    return rows_to_records(_jsonl_rows(path), path, image_root, splits, split, check_files)


def read_csv(path: str | Path, *, image_root: str | Path | None = None,
             splits: Iterable[str] | None = None, split: str = "", check_files: bool = True,
             delimiter: str = ",", list_separator: str = "|") -> Labelled:
    """Read a CSV file with a header row (as :func:`read_jsonl`); empty cells are absent."""
    path = Path(path)
    return rows_to_records(_csv_rows(path, delimiter, list_separator), path, image_root,
                           splits, split, check_files)


def _open_text(path: Path):
    if not path.is_file():
        raise DataError(path, "file not found" if not path.exists() else "expected a file")
    return path.open(encoding="utf-8", newline="")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict]]:
    index = 0
    with _open_text(path) as f:
        try:
            for line in f:
                if not line.strip():
                    continue
                yield index, _json_row(line, path, index)
                index += 1
        except UnicodeDecodeError as err:
            raise DataError(path, f"not UTF-8 text ({err.reason})", index=index) from None


def _json_row(line: str, path: Path, index: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON: {err.msg} at column {err.colno}",
                        index=index) from None
    if not isinstance(row, dict):
        raise DataError(path, f"expected an object, got {_json_type(row)}", index=index)
    return row


_LIST_COLUMNS = ("captions", "answers")


def _csv_rows(path: Path, delimiter: str, separator: str) -> Iterator[tuple[int, dict]]:
    with _open_text(path) as f:
        try:
            reader = csv.DictReader(f, delimiter=delimiter, strict=True)
            if not reader.fieldnames or "image" not in reader.fieldnames:
                raise DataError(path, f"the header row has no 'image' column "
                                      f"(got {reader.fieldnames})", key="image")
            for index, row in enumerate(reader):
                yield index, _csv_row(row, path, index, separator)
        except csv.Error as err:
            raise DataError(path, f"not valid CSV: {err}") from None
        except UnicodeDecodeError as err:
            raise DataError(path, f"not UTF-8 text ({err.reason})") from None


def _csv_row(row: dict, path: Path, index: int, separator: str) -> dict:
    if None in row:  # csv puts the cells beyond the header under the key None
        raise DataError(path, f"{len(row[None])} more cell(s) than header columns", index=index)
    out: dict[str, Any] = {k: v.strip() for k, v in row.items() if v is not None and v.strip()}
    for key in _LIST_COLUMNS:
        if key in out:
            out[key] = [part.strip() for part in out[key].split(separator)]
    if "question_id" in out:
        try:
            out["question_id"] = int(out["question_id"])
        except ValueError:
            raise DataError(path, f"expected an integer, got {out['question_id']!r}",
                            index=index, key="question_id") from None
    return out


# --- rows -> records ---------------------------------------------------------------------


def rows_to_records(rows: Iterable[tuple[int, Mapping[str, Any]]], path: Path,
                    image_root: str | Path | None, splits: Iterable[str] | None,
                    default_split: str, check_files: bool) -> Labelled:
    """Group rows into captioned images and questions, checking every key's type."""
    root = Path(image_root) if image_root is not None else path.parent
    wanted = None if splits is None else frozenset(splits)
    out, groups = Labelled(), _CaptionGroups()
    seen_questions: dict[Any, int] = {}
    for i, row in rows:
        split = _field(row, "split", (str,), path, i) if "split" in row else None
        if wanted is not None and split is not None and split not in wanted:
            continue
        image = _field(row, "image", (str,), path, i)
        if not image.strip():
            raise DataError(path, "expected an image path, got an empty string", index=i,
                            key="image")
        image_id = _field(row, "image_id", (int, str), path, i) if "image_id" in row else image
        image_path, split = root / image, split or default_split
        captions = _row_captions(row, path, i)
        if captions is None and "question" not in row:
            raise DataError(path, "expected 'caption', 'captions' or 'question'", index=i,
                            key="caption")
        if captions is not None:
            groups.add(i, image_id, image_path, split, captions, out.skipped, path)
        if "question" in row:
            _add_question(out, row, i, path, image_id, image_path, seen_questions)
    out.captions = groups.records(path, check_files, out.skipped)
    out.questions = _existing(out.questions, path, check_files, out.skipped)
    return out


def _row_captions(row: Mapping[str, Any], path: Path, i: int) -> list[str] | None:
    if "caption" not in row and "captions" not in row:
        return None
    found = [_field(row, "caption", (str,), path, i)] if "caption" in row else []
    if "captions" in row:
        for j, text in enumerate(_field(row, "captions", (list,), path, i)):
            if not isinstance(text, str):
                raise DataError(path, f"expected a string, got {_json_type(text)}", index=i,
                                key=f"captions[{j}]")
            found.append(text)
    return found or None  # an empty list: no captions on this row


class _CaptionGroups:
    """Captions collected per image file, in first-seen order."""

    def __init__(self) -> None:
        self.groups: dict[Path, tuple[int, Any, str, list[str]]] = {}

    def add(self, i: int, image_id: Any, image_path: Path, split: str, captions: list[str],
            skipped: list[str], path: Path) -> None:
        texts = self.groups.setdefault(image_path, (i, image_id, split, []))[3]
        for text in captions:
            if text.strip():
                texts.append(text.strip())
            else:
                skipped.append(f"{path.name} record {i}: empty caption")

    def records(self, path: Path, check_files: bool, skipped: list[str]) -> list[ImageCaptions]:
        out = []
        for image_path, (i, image_id, split, texts) in self.groups.items():
            if not texts:
                skipped.append(f"{path.name} record {i}: no non-empty caption")
            elif check_files and not image_path.is_file():
                skipped.append(f"{path.name} record {i}: image file not found: {image_path}")
            else:
                out.append(ImageCaptions(image_id, image_path, split, tuple(texts)))
        return out


def _add_question(out: Labelled, row: Mapping[str, Any], i: int, path: Path, image_id: Any,
                  image_path: Path, seen: dict[Any, int]) -> None:
    question = _field(row, "question", (str,), path, i)
    answers = answer_strings(_field(row, "answers", (list,), path, i), path, i)
    question_id = _field(row, "question_id", (int,), path, i) if "question_id" in row else i
    _check_unique(seen, question_id, i, path, "question_id")
    kinds = [_field(row, k, (str,), path, i) if k in row else ""
             for k in ("question_type", "answer_type")]
    answers = tuple(a.strip() for a in answers if a.strip())
    if not question.strip() or not answers:
        out.skipped.append(f"{path.name} record {i}: "
                           + ("empty question" if not question.strip() else "no answers"))
        return
    out.questions.append(VQAItem(question_id, image_id, image_path, question.strip(), answers,
                                 most_common(answers), *kinds))


def answer_strings(answers: list, path: Path | str, i: int) -> list[str]:
    """Answers as strings: plain strings, or VQAv2-style ``{"answer": ...}`` objects."""
    out = []
    for j, entry in enumerate(answers):
        if isinstance(entry, dict):
            entry = _field(entry, "answer", (str,), Path(path), i, label=f"answers[{j}].answer")
        if not isinstance(entry, str):
            raise DataError(path, f"expected a string, got {_json_type(entry)}", index=i,
                            key=f"answers[{j}]")
        out.append(entry)
    return out


def most_common(answers: tuple[str, ...]) -> str:
    """The answer most annotators gave (VQAv2's multiple_choice_answer); ties: first given."""
    return Counter(answers).most_common(1)[0][0]


def _existing(questions: list[VQAItem], path: Path, check_files: bool,
              skipped: list[str]) -> list[VQAItem]:
    if not check_files:
        return questions
    exists: dict[Path, bool] = {}
    kept = []
    for q in questions:
        if exists.setdefault(q.image_path, q.image_path.is_file()):
            kept.append(q)
        else:
            skipped.append(f"{path.name} question_id {q.question_id}: image file not found: "
                           f"{q.image_path}")
    return kept
