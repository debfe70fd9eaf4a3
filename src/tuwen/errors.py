"""Errors that reach the user as one clear line.

Every error tuwen raises on bad input derives from ``TuwenError``; the CLI prints
``str(err)`` on one line and exits non-zero, without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class TuwenError(Exception):
    """Base class for errors caused by the user's input, config or environment."""


class TuwenWarning(UserWarning):
    """Something the user should know that does not stop the run; the CLI prints it as one
    line (``tuwen: note: ...``)."""


class ConfigError(TuwenError):
    """A config key is unknown, mistyped or inconsistent with another key."""


class DataError(TuwenError):
    """A data file is missing, malformed, or holds a record that cannot be used.

    The message names the file, and where known the record index and the key.
    """

    def __init__(self, path: str | Path, problem: str, *, index: int | None = None,
                 key: str | None = None) -> None:
        self.path, self.problem, self.index, self.key = str(path), problem, index, key
        where = self.path
        if index is not None:
            where += f", record {index}"
        if key is not None:
            where += f", key {key!r}"
        super().__init__(f"{where}: {problem}")
