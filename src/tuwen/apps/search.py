"""``tuwen search``: the best-matching images of an index for a text or an image.

The query is embedded with the model that built the index (its identity is checked), and
the FAISS index returns the images of highest ITC cosine similarity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuwen.apps.index import (
    IndexOptions,
    check_model,
    data_file,
    read_entries,
    read_meta,
    set_search_options,
)
from tuwen.errors import TuwenError


@dataclass
class Hit:
    rank: int
    id: int
    score: float
    path: str     # relative to the indexed folder


class UnknownImage(TuwenError):
    """An image id that the index does not hold."""


class ImageIndex:
    """A built index, loaded for searching."""

    def __init__(self, directory: str | Path) -> None:
        import faiss

        self.directory = Path(directory)
        for attempt in range(3):  # an update may commit, and remove these files, meanwhile
            meta = read_meta(self.directory)
            if meta is None:
                raise TuwenError(f"{self.directory}: no index here (run tuwen index first)")
            try:
                entries = read_entries(self.directory, meta)
                index = faiss.read_index(str(data_file(self.directory, "faiss", meta)))
                break
            except (TuwenError, OSError, RuntimeError):  # faiss: RuntimeError
                if attempt == 2 or read_meta(self.directory) == meta:
                    raise
        if index.ntotal != len(entries) or meta.get("count", len(entries)) != len(entries):
            raise TuwenError(f"{self.directory}: the index holds {index.ntotal} vectors for "
                             f"{len(entries)} images; run tuwen index again")
        self.meta, self.entries, self.index = meta, entries, index
        self.root = Path(meta["root"])
        set_search_options(self.index, IndexOptions(**meta["options"]))

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def model_dir(self) -> str:
        return self.meta["model_dir"]

    def check_model(self, model_id: str) -> None:
        check_model(self.meta, model_id, self.directory)

    def search(self, vector: np.ndarray, k: int = 10) -> list[Hit]:
        """The ``k`` images nearest to one unit-norm ``vector`` (E,), best first."""
        if not len(self.entries):
            return []
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.meta["embed_dim"]:
            raise TuwenError(f"query has {query.shape[1]} dimensions; the index holds "
                             f"{self.meta['embed_dim']}")
        scores, ids = self.index.search(query, min(k, len(self.entries)))
        hits = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        return [Hit(rank + 1, i, s, self.entries[i].path) for rank, (i, s) in enumerate(hits)]

    def image_path(self, image_id: int) -> Path:
        """The file of an indexed image, by id only (the id is a row; no name is trusted)."""
        if not 0 <= image_id < len(self.entries):
            raise UnknownImage(f"image id {image_id} is not in the index (0..{len(self) - 1})")
        return self.root / self.entries[image_id].path


def search_index(index: ImageIndex, pipe, query: str | None = None, image=None,
                 k: int = 10) -> list[Hit]:
    """Embed a text ``query`` or an ``image`` with ``pipe`` and search ``index``."""
    index.check_model(pipe.model_id)
    if (query is None) == (image is None):
        raise TuwenError("search needs either a text query or an image (one of the two)")
    vector = pipe.embed_texts([query]) if image is None else pipe.embed_images([image])
    return index.search(vector[0], k)
