"""Hugging Face ``datasets``: a ``save_to_disk`` folder (``load_from_disk``), or local files
through ``load_dataset`` (json, csv, parquet, imagefolder, ...); nothing is downloaded.

Rows become the JSONL/CSV row shape (:mod:`tuwen.data.readers_table`) with the configured
column names: the image column is an ``Image`` feature (bytes written once to the cache
folder, see :mod:`tuwen.data.embedded`) or a path string; the text column a string or a
list of strings; answers strings or VQAv2-style ``{"answer": ...}`` objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuwen.data.embedded import content_hash, store_image
from tuwen.data.readers import _json_type
from tuwen.data.readers_table import rows_to_records
from tuwen.data.records import Labelled
from tuwen.errors import DataError

_PASSED_THROUGH = ("question_id", "question_type", "answer_type")


@dataclass(frozen=True)
class Columns:
    image: str = "image"
    text: str | None = "caption"
    question: str | None = None
    answers: str = "answers"
    image_id: str | None = None


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("datasets", "format hf needs the datasets package: "
                                    "pip install 'tuwen[data]'") from None
    datasets.disable_progress_bars()
    return datasets


def load_hf_split(*, path: Path | None = None, builder: str | None = None,
                  data_files: Any = None, split: str, cache_dir: Path):
    """One split as a ``datasets.Dataset``; ``path`` a save_to_disk folder or ``builder`` +
    ``data_files`` (a dict of split -> files names the splits; else the files are one split)."""
    datasets = _datasets()
    if path is not None:
        try:
            loaded = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as err:
            raise DataError(path, f"not a datasets save_to_disk folder ({_first(err)})") from None
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(path, f"no split {split!r} (it has {sorted(loaded)})")
            return loaded[split]
        return loaded
    hf_split = split if isinstance(data_files, dict) else "train"
    if isinstance(data_files, dict) and split not in data_files:
        raise DataError(builder, f"data_files has no split {split!r} (it has {sorted(data_files)})")
    try:
        return datasets.load_dataset(builder, data_files=data_files, split=hf_split,
                                     cache_dir=str(cache_dir / "hf"))
    except (FileNotFoundError, ValueError) as err:
        raise DataError(f"{builder} {data_files}", f"load_dataset failed: {_first(err)}") from None
    except Exception as err:  # arrow/json parse errors have no common base class
        raise DataError(f"{builder} {data_files}", f"cannot read: {_first(err)}") from None


def _first(err: BaseException) -> str:
    """The first line of an error, and of its cause (datasets wraps the parser's error)."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    return f"{text}: {_first(err.__cause__)}" if err.__cause__ is not None else text


def read_hf(dataset, name: str | Path, *, columns: Columns = Columns(),
            image_root: Path, cache_dir: Path, split: str = "",
            check_files: bool = True) -> Labelled:
    """Records of a loaded ``datasets.Dataset``; ``name`` is what errors name."""
    _check_columns(dataset, name, columns)
    dataset = _undecoded(dataset, columns.image)
    rows = _rows(dataset, name, columns, Path(cache_dir).resolve() / "images")
    return rows_to_records(rows, Path(name), image_root, None, split, check_files)


def _check_columns(dataset, name, columns: Columns) -> None:
    have = set(dataset.column_names)
    wanted = {"image_column": columns.image, "text_column": columns.text,
              "question_column": columns.question, "image_id_column": columns.image_id}
    if columns.question:
        wanted["answers_column"] = columns.answers
    for key, column in wanted.items():
        if column is not None and column not in have:
            raise DataError(name, f"{key} {column!r} is not a column (columns: "
                                  f"{sorted(have)})", key=column)


def _undecoded(dataset, column: str):
    """Image features as {"bytes", "path"}: decoding happens later, per sample, checked."""
    datasets = _datasets()
    if isinstance(dataset.features[column], datasets.Image):
        return dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


def _rows(dataset, name, columns: Columns, store: Path) -> Iterator[tuple[int, dict]]:
    index = 0
    for batch in dataset.iter(batch_size=256):
        for values in zip(*batch.values()):
            row = dict(zip(batch.keys(), values))
            yield index, _row(row, name, index, columns, store)
            index += 1


def _row(row: dict, name, i: int, columns: Columns, store: Path) -> dict:
    image, image_id = _image(row[columns.image], name, i, columns.image, store)
    out: dict[str, Any] = {"image": str(image),
                           "image_id": row[columns.image_id] if columns.image_id else image_id}
    text = row[columns.text] if columns.text else None
    if isinstance(text, str):
        out["caption"] = text
    elif isinstance(text, list):
        out["captions"] = text
    elif text is not None:
        raise DataError(name, f"expected a string or a list, got {_json_type(text)}", index=i,
                        key=columns.text)
    if columns.question and row[columns.question] is not None:
        out["question"], out["answers"] = row[columns.question], row[columns.answers]
        out.update({k: row[k] for k in _PASSED_THROUGH if row.get(k) is not None})
    return out


def _image(value: Any, name, i: int, column: str, store: Path) -> tuple[Path | str, str]:
    """The image's file (bytes: stored in the cache; a path: as given, relative to the image
    root) and a default id for it."""
    if isinstance(value, dict) and value.get("bytes") is not None:  # b"": a bad sample later
        data = value["bytes"]
        return store_image(store, data), content_hash(data)[:16]
    path = value.get("path") if isinstance(value, dict) else value
    if isinstance(path, str) and path:
        return path, path
    raise DataError(name, f"expected an image (bytes or a path), got {_json_type(value)}",
                    index=i, key=column)
