"""WebDataset tar shards as img2dataset writes them: ``KEY.jpg|png|webp`` + ``KEY.txt`` and/or
``KEY.json`` (with a ``caption``) per sample, shard lists given by brace patterns.

Tar members are read with the ``webdataset`` library's tar iterator. A damaged shard (cut
off mid-download, corrupt) yields the samples before the damage and a warning; the rest of
that shard is skipped and other shards go on. The sample in progress at the damage is
dropped, since its files may be incomplete.
"""

from __future__ import annotations

import json
import tarfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuwen.data.embedded import store_image
from tuwen.data.records import ImageCaptions, Labelled
from tuwen.errors import DataError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def _webdataset():
    try:
        import webdataset
    except ImportError:
        raise DataError("webdataset", "format webdataset needs the webdataset package: "
                                      "pip install 'tuwen[data]'") from None
    return webdataset


def base_plus_ext(name: str) -> tuple[str | None, str | None]:
    """``"dir/000123.seg.png"`` -> (``"dir/000123"``, ``"seg.png"``): webdataset's key rule."""
    return _webdataset().tariterators.base_plus_ext(name)


def expand_shards(pattern: str, root: str | Path = ".") -> list[Path]:
    """``"shards/{00000..00009}.tar"`` -> the ten paths (under ``root``), checked to exist."""
    urls = _webdataset().shardlists.expand_urls(pattern)
    paths = [Path(root) / url for url in urls]
    missing = [p for p in paths if not p.is_file()]
    if not paths:
        raise DataError(pattern, "the shard pattern names no files")
    if missing:
        raise DataError(missing[0], f"shard not found ({len(missing)} of {len(paths)} shards "
                                    f"of {pattern!r} missing)")
    return paths


@dataclass(frozen=True)
class ShardSample:
    """One sample of a shard: its image bytes and captions, or why it cannot be used."""

    shard: Path
    key: str
    image: bytes | None
    captions: tuple[str, ...]
    problem: str | None = None

    @property
    def name(self) -> str:
        """``shard.tar:KEY``, as messages name the sample."""
        return f"{self.shard.name}:{self.key}"


def iter_shard(shard: Path, caption_key: str = "caption") -> Iterator[ShardSample]:
    """The samples of one shard in file order; a damaged shard ends early with a warning.

    Damage inside a member's data drops that member's sample (it is incomplete) and keeps
    the one before it; damage in a header drops the sample in progress, which may be
    missing files.
    """
    group: dict[str, bytes] = {}
    key, count = None, 0
    try:
        for name, data in _members(shard):
            stem, ext = base_plus_ext(name)
            if stem is None:
                continue
            if stem != key and group:
                count += 1
                yield _sample(shard, key, group, caption_key)
                group = {}
            key = stem
            group[ext.lower()] = data
    except _Damaged as damage:
        if group and damage.member is not None and base_plus_ext(damage.member)[0] != key:
            count += 1
            yield _sample(shard, key, group, caption_key)
        warnings.warn(f"{shard}: truncated or corrupt tar after {count} samples "
                      f"({_first_line(damage.error)}); rest of the shard skipped",
                      RuntimeWarning, stacklevel=2)
        return
    if group:
        yield _sample(shard, key, group, caption_key)


def _members(shard: Path) -> Iterator[tuple[str, bytes]]:
    """(file name, bytes) of every regular member, streamed; ``_Damaged`` at damage."""
    reading = None  # the member whose data is being read, if any
    try:
        with shard.open("rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for info in tar:
                if not info.isreg() or info.name.split("/")[-1].startswith("__"):
                    continue  # folders, and webdataset's __meta__ files
                reading = info.name
                data = tar.extractfile(info).read()
                reading = None
                yield info.name, data
            _check_end(f, tar)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise _Damaged(reading, err) from None


def _check_end(f, tar: tarfile.TarFile) -> None:
    """tarfile stops quietly at a cut-off or garbled header; a whole tar ends in zeros.

    After the last member come two zero blocks and zero padding up to a 10 KiB record:
    anything else (missing, short, or data) means the archive was cut or is damaged there.
    """
    if getattr(tar.fileobj, "comptype", "tar") != "tar":
        return  # compressed: positions are not file offsets
    f.seek(tar.offset)
    rest = f.read(tarfile.RECORDSIZE + 1)
    if len(rest) > tarfile.RECORDSIZE or len(rest) < 2 * tarfile.BLOCKSIZE or rest.strip(b"\0"):
        raise tarfile.ReadError(f"no end-of-archive marker after byte {tar.offset} (cut off "
                                "or damaged there)")


class _Damaged(Exception):
    def __init__(self, member: str | None, error: BaseException) -> None:
        super().__init__(member, error)
        self.member, self.error = member, error


def _first_line(err: BaseException) -> str:
    text = str(err).splitlines()
    return text[0] if text else type(err).__name__


def _sample(shard: Path, key: str, files: dict[str, bytes], caption_key: str) -> ShardSample:
    image = next((files[ext] for ext in IMAGE_EXTENSIONS if ext in files), None)
    captions, problem = _captions(files, caption_key)
    if image is None:
        problem = f"no image ({'/'.join('.' + e for e in IMAGE_EXTENSIONS)})"
    return ShardSample(shard, key, image, captions, problem)


def _captions(files: dict[str, bytes], caption_key: str) -> tuple[tuple[str, ...], str | None]:
    """The caption from ``.txt``, else from ``.json``'s ``caption_key``; or the problem."""
    try:
        if "txt" in files:
            text = files["txt"].decode("utf-8").strip()
        elif "json" in files:
            meta = json.loads(files["json"])
            text = meta.get(caption_key) if isinstance(meta, dict) else None
            if not isinstance(text, str):
                return (), f".json: key {caption_key!r}: expected a string, got " \
                           f"{type(text).__name__ if text is not None else 'nothing'}"
            text = text.strip()
        else:
            return (), "no caption (.txt, or .json with a caption)"
    except UnicodeDecodeError as err:
        return (), f"caption is not UTF-8 ({err.reason})"
    except json.JSONDecodeError as err:
        return (), f".json: not valid JSON: {err.msg} at column {err.colno}"
    return ((text,), None) if text else ((), "empty caption")


def read_webdataset(shards: list[Path], cache_dir: str | Path, *, split: str = "",
                    caption_key: str = "caption") -> Labelled:
    """All samples as records, images written to ``cache_dir`` (for evaluation, the doctor).

    Training streams shards instead (:mod:`tuwen.data.streaming`); ``image_id`` is the key.
    """
    out = Labelled()
    for shard in shards:
        for s in iter_shard(shard, caption_key):
            if s.problem is not None:
                out.skipped.append(f"{s.name}: {s.problem}")
            else:
                out.captions.append(ImageCaptions(s.key, store_image(cache_dir, s.image), split,
                                                  s.captions))
    return out


def shard_texts(shards: list[Path], caption_key: str = "caption",
                limit: int | None = None) -> list[str]:
    """Captions only (no image decoding): what the tokenizer is trained on."""
    texts: list[str] = []
    for shard in shards:
        for s in iter_shard(shard, caption_key):
            texts.extend(s.captions)
            if limit is not None and len(texts) >= limit:
                return texts[:limit]
    return texts
