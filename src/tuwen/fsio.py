"""Crash-safe file writes: a file is written under a temporary name and renamed.

A kill, a full disk or a permission error while writing leaves the previous version of the
file (or of the folder) as it was; ``os.replace`` swaps the name in one step on POSIX and
Windows. A failed write raises ``WriteError``, one line naming the file, the reason and
that the previous version is intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tuwen.errors import TuwenError


class WriteError(TuwenError):
    """A file could not be written; the previous version is left in place."""


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as f:
        os.fsync(f.fileno())


def _failed(path: Path, err: OSError) -> WriteError:
    kept = "the previous version is intact" if path.exists() else "nothing was written"
    reason = getattr(err, "strerror", None) or str(err).splitlines()[-1]
    return WriteError(f"{path}: could not write ({reason}); {kept}")


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_path(path: str | Path, errors: tuple[type[Exception], ...] = ()) -> Iterator[Path]:
    """Yields a temporary path next to ``path``; write it, and on a clean exit it is synced
    and renamed to ``path``. On any error it is removed and ``path`` is untouched; an
    ``OSError`` (or one of ``errors``, a writer's own I/O error type) becomes a WriteError."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, *errors) as err:
        raise _failed(path, err) from None
    finally:
        if tmp.exists():
            tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data, indent: int | None = None) -> None:
    write_text(path, json.dumps(data, indent=indent, ensure_ascii=False))


@contextmanager
def atomic_dir(path: str | Path, errors: tuple[type[Exception], ...] = ()) -> Iterator[Path]:
    """Yields an empty temporary folder next to ``path``; on a clean exit it replaces
    ``path`` (an older ``path`` is moved aside first and removed last, so a kill between
    leaves one complete version). On an error the temporary folder is removed."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    old = path.with_name(f".old-{path.name}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        yield tmp
        for child in tmp.iterdir():
            if child.is_file():
                _fsync_file(child)
        _fsync_dir(tmp)
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, *errors) as err:
        raise _failed(path, err) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read a MiB at a time."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
