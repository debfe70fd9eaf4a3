"""One configured data source -> its records for one split of the run.

Each ``format`` has one function here that resolves the source's paths (relative to
``data.root``; ``{split}`` replaced by the source's name for the split) and calls that
format's reader. ``SourceData`` is the result: captioned images, questions, conversations,
what was skipped and why, and, for webdataset sources read for training, the shards to
stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tuwen.config import (
    COCO_IMAGE_PATTERN,
    CocoSource,
    CsvSource,
    HFSource,
    ImageFolderSource,
    JsonlSource,
    KarpathySource,
    LlavaSource,
    SourceConfig,
    VQAv2Source,
    WebDatasetSource,
)
from tuwen.data.coco import read_coco_captions
from tuwen.data.readers import load_json, read_karpathy, read_vqav2
from tuwen.data.readers_folder import read_image_folder
from tuwen.data.readers_hf import Columns, load_hf_split, read_hf
from tuwen.data.readers_llava import read_llava
from tuwen.data.readers_table import read_csv, read_jsonl
from tuwen.data.readers_wds import expand_shards, read_webdataset
from tuwen.data.records import Labelled
from tuwen.errors import DataError


@dataclass(frozen=True)
class ShardSource:
    """A webdataset source to stream: its shards and how to read them."""

    name: str
    shards: tuple[Path, ...]
    weight: float = 1.0
    shuffle_buffer: int = 1000
    caption_key: str = "caption"


@dataclass
class SourceData:
    name: str
    weight: float = 1.0
    labels: Labelled = field(default_factory=Labelled)
    stream: ShardSource | None = None


@dataclass(frozen=True)
class Where:
    """Where a source's files are: the data root, the extraction cache, and the split names."""

    root: Path
    cache_dir: Path
    names: list[str]
    stream: bool = False
    check_files: bool = True  # skip records whose image file is missing (False: the doctor)

    def path(self, relative: str, name: str) -> Path:
        return self.root / relative.replace("{split}", name)

    def paths(self, relative: str) -> list[tuple[str, Path]]:
        """(split name, path) for each distinct file the names resolve to."""
        seen: dict[Path, str] = {}
        for name in self.names:
            seen.setdefault(self.path(relative, name), name)
        return [(name, path) for path, name in seen.items()]


def read_source(source: SourceConfig, root: Path, split: str, cache_dir: Path, *,
                stream: bool = False, check_files: bool = True) -> SourceData:
    """``source``'s records for the run's ``split`` (nothing when it does not serve it).

    ``stream=True`` (training) leaves webdataset shards unread, to be streamed;
    ``check_files=False`` keeps records whose image file is missing.
    """
    out = SourceData(source.name, source.weight)
    names = source.split_names(split)
    if not names:
        return out
    where = Where(root, cache_dir, names, stream, check_files)
    result = READERS[source.format](source, where)
    if isinstance(result, ShardSource):
        out.stream = result
        return out
    has = source.provides()
    out.labels = Labelled(result.captions if "caption" in has else [],
                          result.questions if "vqa" in has else [], result.skipped,
                          result.classes if "class" in has else [],
                          result.conversations if "chat" in has else [])
    return out


def _merge(parts: list[Labelled]) -> Labelled:
    out = Labelled()
    for part in parts:
        out.captions += part.captions
        out.questions += part.questions
        out.skipped += part.skipped
        out.classes += part.classes
        out.conversations += part.conversations
    return out


def _image_root(source: SourceConfig, where: Where, name: str) -> Path | None:
    return None if source.image_root is None else where.path(source.image_root, name)


def _karpathy(source: KarpathySource, where: Where) -> Labelled:
    parts = []
    for name, path in where.paths(source.path):
        read = read_karpathy(path, image_root=_image_root(source, where, name), splits=where.names,
                             check_files=where.check_files)
        parts.append(Labelled(read.records, [], read.skipped))
    return _merge(parts)


def _coco(source: CocoSource, where: Where) -> Labelled:
    parts = []
    for name, path in where.paths(source.path):
        read = read_coco_captions(path, image_root=_image_root(source, where, name), split=name,
                                  check_files=where.check_files)
        parts.append(Labelled(read.records, [], read.skipped))
    return _merge(parts)


def _vqav2(source: VQAv2Source, where: Where) -> Labelled:
    parts = []
    for name in where.names:
        image_map = _image_map(where.path(source.image_map, name)) if source.image_map else None
        read = read_vqav2(where.path(source.questions, name), where.path(source.annotations, name),
                          image_pattern=source.image_pattern or COCO_IMAGE_PATTERN,
                          image_root=_image_root(source, where, name) or where.root,
                          image_map=image_map, check_files=where.check_files)
        parts.append(Labelled([], read.records, read.skipped))
    return _merge(parts)


def _image_map(path: Path) -> dict[str, str]:
    """``{"<image_id>": "relative/file.jpg"}``, checked."""
    doc = load_json(path)
    if not isinstance(doc, dict):
        raise DataError(path, "expected an object mapping image ids to file names")
    for key, value in doc.items():
        if not isinstance(value, str) or not value.strip():
            raise DataError(path, "expected a file name (a non-empty string)", key=key)
    return doc


def _table(source: JsonlSource | CsvSource, where: Where) -> Labelled:
    per_split = "{split}" in source.path
    extra = ({} if source.format == "jsonl" else
             {"delimiter": source.delimiter, "list_separator": source.list_separator})
    read = read_jsonl if source.format == "jsonl" else read_csv
    parts = [read(path, image_root=_image_root(source, where, name),
                  splits=[name] if per_split else where.names, split=name,
                  check_files=where.check_files, **extra)
             for name, path in where.paths(source.path)]
    return _merge(parts)


def _llava(source: LlavaSource, where: Where) -> Labelled:
    per_split = "{split}" in source.path
    return _merge([read_llava(path, image_root=_image_root(source, where, name),
                              splits=[name] if per_split else where.names, split=name,
                              check_files=where.check_files)
                   for name, path in where.paths(source.path)])


def _image_folder(source: ImageFolderSource, where: Where) -> Labelled:
    parts = []
    for name, path in where.paths(source.path):
        read = read_image_folder(path, name)
        parts.append(Labelled([], [], read.skipped, read.records))
    return _merge(parts)


def _webdataset(source: WebDatasetSource, where: Where) -> Labelled | ShardSource:
    shards = [s for name in where.names
              for s in expand_shards(source.shards.replace("{split}", name), where.root)]
    shards = list(dict.fromkeys(shards))
    if where.stream:
        return ShardSource(source.name, tuple(shards), source.weight, source.shuffle_buffer,
                           source.caption_key)
    return read_webdataset(shards, where.cache_dir / "images", split=where.names[0],
                           caption_key=source.caption_key)


def _hf(source: HFSource, where: Where) -> Labelled:
    columns = Columns(source.image_column, source.text_column, source.question_column,
                      source.answers_column, source.image_id_column)
    parts = []
    for name in where.names:
        path = where.path(source.path, name) if source.path is not None else None
        files = _data_files(source.data_files, where, name)
        dataset = load_hf_split(path=path, builder=source.builder, data_files=files, split=name,
                                cache_dir=where.cache_dir)
        root = _image_root(source, where, name) or path or _first_parent(files)
        parts.append(read_hf(dataset, path or f"{source.builder}:{source.name}",
                             columns=columns, image_root=root, cache_dir=where.cache_dir,
                             split=name, check_files=where.check_files))
    return _merge(parts)


def _data_files(files, where: Where, name: str):
    """data_files with every path resolved under the data root."""
    if files is None:
        return None
    if isinstance(files, dict):
        return {k: _data_files(v, where, name) for k, v in files.items()}
    if isinstance(files, str):
        return str(where.path(files, name))
    return [str(where.path(f, name)) for f in files]


def _first_parent(files) -> Path:
    while isinstance(files, (dict, list)):
        files = next(iter(files.values())) if isinstance(files, dict) else files[0]
    return Path(files).parent


READERS: dict[str, Callable[[SourceConfig, Where], Labelled | ShardSource]] = {
    "karpathy": _karpathy, "coco": _coco, "vqav2": _vqav2, "jsonl": _table, "csv": _table,
    "webdataset": _webdataset, "hf": _hf, "imagefolder": _image_folder, "llava": _llava,
}
