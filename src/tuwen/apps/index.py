"""``tuwen index``: embed a folder of images into a FAISS index, incrementally.

An index folder holds::

    index.json        the model's identity and folder, the FAISS kind and its settings, counts,
                      and the generation: which of the files below are the index
    entries-G.jsonl   one line per image, in row order: path (relative to the folder), size, mtime
    vectors-G.npy     (N, E) float32 unit-norm ITC embeddings, row i = entry i = id i
    index-G.faiss     the FAISS index over vectors-G.npy

An update writes the files of generation G + 1 next to those of G, each under a temporary
name renamed when whole, then index.json (the commit, one rename), and only then removes
generation G. A kill at any moment leaves index.json naming one complete generation: the old
index or the new one, never new entries with old vectors. The next run clears what a killed
one left (temporary files, a generation that was never committed). Indexes written before
generations (entries.jsonl, vectors.npy, index.faiss; no "files" in index.json) still load.

A re-run embeds only the files that are new or whose size or modification time changed,
and drops the files that are gone; the FAISS index is rebuilt from ``vectors.npy`` (exact
inner product below ``exact_below`` images, an approximate index above: a product-quantised
scan with exact re-ranking, HNSW or IVF). Under ``torchrun`` /
``accelerate launch`` each process embeds its share of the new files and the first merges
the shards, through the same Accelerate state training uses.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from tuwen import fsio
from tuwen.apps.images import ImageRejected
from tuwen.errors import DataError, TuwenError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"})
META_FILE = "index.json"
# an index written before generations: these fixed names, and no "files" in index.json
LEGACY_FILES = {"entries": "entries.jsonl", "vectors": "vectors.npy", "faiss": "index.faiss"}
FORMAT_VERSION = 1
PQ_MIN_VECTORS = 1000


class IndexOptions(BaseModel):
    """How the FAISS index is built and searched (recorded in index.json)."""

    model_config = ConfigDict(extra="forbid")
    exact_below: int = Field(100_000, ge=0)  # exact inner product below this many images
    approximate: Literal["pq", "hnsw", "ivf"] = "pq"
    pq_rerank: int = Field(100, ge=1)         # pq: candidates re-ranked exactly, per result
    hnsw_m: int = Field(32, ge=4)             # graph links per vector
    hnsw_ef_construction: int = Field(80, ge=8)
    hnsw_ef_search: int = Field(128, ge=1)    # candidates kept while searching
    ivf_lists: int | None = Field(None, ge=1)  # default 4 * sqrt(N)
    ivf_probe: int = Field(32, ge=1)          # lists visited per query

    def kind(self, n: int) -> str:
        # product codes need a few hundred vectors to train; so few are searched exactly anyway
        small = n < max(self.exact_below, PQ_MIN_VECTORS if self.approximate == "pq" else 0)
        return "exact" if small else self.approximate


class IndexMismatch(TuwenError):
    """An index searched or updated with a model other than the one that built it."""


@dataclass(frozen=True)
class Entry:
    path: str        # relative to the indexed folder, with '/' separators
    size: int
    mtime_ns: int


@dataclass
class IndexReport:
    total: int
    added: int
    removed: int
    unchanged: int
    kind: str
    seconds: float
    skipped: list[str] = field(default_factory=list)   # unreadable images, one line each

    def summary(self) -> str:
        rate = self.added / self.seconds if self.seconds else 0.0
        skipped = f", {len(self.skipped)} unreadable skipped" if self.skipped else ""
        return (f"{self.total} images indexed ({self.kind}): {self.added} embedded, "
                f"{self.removed} removed, {self.unchanged} unchanged{skipped} in "
                f"{self.seconds:.1f} s ({rate:.1f} images/s)")


def scan(root: Path) -> list[Entry]:
    """Every image file under ``root`` (recursively, by suffix), sorted by path."""
    if not root.is_dir():
        raise TuwenError(f"{root}: not a folder of images")
    out = []
    for path in root.rglob("*"):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            stat = path.stat()
            out.append(Entry(path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return sorted(out, key=lambda e: e.path)


def read_meta(directory: Path) -> dict | None:
    path = directory / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except ValueError as err:
        raise TuwenError(f"{path}: not a tuwen index ({err})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise TuwenError(f"{path}: index format {meta.get('format_version')!r}, expected "
                         f"{FORMAT_VERSION}")
    return meta


def generation_files(generation: int) -> dict[str, str]:
    return {"entries": f"entries-{generation}.jsonl", "vectors": f"vectors-{generation}.npy",
            "faiss": f"index-{generation}.faiss"}


def data_file(directory: Path, kind: str, meta: dict | None = None) -> Path:
    """The ``kind`` file ("entries", "vectors", "faiss") of the generation that index.json
    names; one line if it is missing."""
    meta = meta if meta is not None else read_meta(directory)
    if meta is None:
        raise TuwenError(f"{directory}: no index here (run tuwen index first)")
    path = directory / meta.get("files", LEGACY_FILES)[kind]
    if not path.is_file():
        raise TuwenError(f"{path}: missing, though {directory / META_FILE} names it; run "
                         "tuwen index again into a new --out folder")
    return path


def read_entries(directory: Path, meta: dict | None = None) -> list[Entry]:
    lines = data_file(directory, "entries", meta).read_text().splitlines()
    return [Entry(**json.loads(line)) for line in lines if line]


def read_vectors(directory: Path, meta: dict | None = None) -> np.ndarray:
    return np.load(data_file(directory, "vectors", meta))


def check_model(meta: dict, model_id: str, directory: Path) -> None:
    if meta["model_id"] != model_id:
        raise IndexMismatch(f"{directory} was built with model {meta['model_id']} "
                            f"({meta['model_dir']}); this model is {model_id}: search it with "
                            "that model, or index again into a new folder")


def build_faiss(vectors: np.ndarray, options: IndexOptions):
    """The FAISS index over unit-norm ``vectors`` (N, E): inner product = cosine."""
    import faiss

    n, dim = vectors.shape
    kind = options.kind(n)
    if kind == "exact":
        index = faiss.IndexFlatIP(dim)
    elif kind == "pq":
        index = _pq_rerank_index(vectors, dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = options.hnsw_ef_construction
    else:
        lists = options.ivf_lists or max(1, int(4 * n ** 0.5))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        sample = vectors[np.random.default_rng(0).permutation(n)[: 256 * lists]]
        index.train(sample)
    index.add(vectors)
    return index


def _pq_rerank_index(vectors: np.ndarray, dim: int):
    """4-bit product codes of two dimensions each, scanned with SIMD lookup tables (FAISS
    "fast scan"), the best ``pq_rerank * k`` candidates re-scored exactly on the stored vectors."""
    import faiss

    codes = dim // 2 if dim % 2 == 0 else dim
    index = faiss.IndexRefineFlat(faiss.IndexPQFastScan(dim, codes, 4, faiss.METRIC_INNER_PRODUCT))
    index.train(vectors[np.random.default_rng(0).permutation(len(vectors))[:100_000]])
    return index


def set_search_options(index, options: IndexOptions) -> None:
    import faiss

    if isinstance(index, faiss.IndexRefine):
        index.k_factor = float(options.pq_rerank)
    elif isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = options.hnsw_ef_search
    elif isinstance(index, faiss.IndexIVF):
        index.nprobe = options.ivf_probe


def embed_files(pipe, root: Path, entries: list[Entry], batch_size: int,
                show: bool) -> tuple[list[Entry], np.ndarray, list[str]]:
    """Embed ``entries`` in batches; unreadable images are left out and reported."""
    kept, vectors, skipped = [], [], []
    bar = tqdm(total=len(entries), desc="embed images", unit="img", disable=not show)
    for start in range(0, len(entries), batch_size):
        images, batch = [], []
        for entry in entries[start: start + batch_size]:
            try:
                images.append(pipe.load(root / entry.path))
                batch.append(entry)
            except (DataError, ImageRejected) as err:
                skipped.append(str(err))
        if images:
            vectors.append(pipe.embed_images(images))
            kept.extend(batch)
        bar.update(len(entries[start: start + batch_size]))
    bar.close()
    dim = pipe.embed_dim
    return kept, (np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)), skipped


@dataclass
class Plan:
    """What an update does: which old rows stay, which files to embed."""

    keep_rows: list[int]
    keep: list[Entry]
    todo: list[Entry]
    removed: int


def plan_update(current: list[Entry], old: list[Entry]) -> Plan:
    now = set(current)
    keep_rows = [i for i, e in enumerate(old) if e in now]
    keep = [old[i] for i in keep_rows]
    kept = set(keep)
    todo = [e for e in current if e not in kept]
    return Plan(keep_rows, keep, todo, len(old) - len(keep))


def _atomic_write(path: Path, write) -> None:
    """``write(tmp)`` to a temporary name, then renamed (tuwen.fsio): a kill or a full disk
    leaves the previous file whole."""
    with fsio.atomic_path(path, (RuntimeError,)) as tmp:  # faiss raises RuntimeError
        write(tmp)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as f:  # a file object: np.save would append .npy to a name
        np.save(f, array)


def write_index(out: Path, meta: dict, entries: list[Entry], vectors: np.ndarray,
                options: IndexOptions) -> str:
    """Write the next generation's three files, then commit it by writing index.json, then
    remove the previous generation (see the module's docstring)."""
    import faiss

    out.mkdir(parents=True, exist_ok=True)
    previous = read_meta(out)
    generation = (previous or {}).get("generation", 0) + 1
    files = generation_files(generation)
    order = np.argsort([e.path for e in entries], kind="stable")
    entries, vectors = [entries[i] for i in order], np.ascontiguousarray(vectors[order])
    lines = "".join(json.dumps(e.__dict__) + "\n" for e in entries)
    _atomic_write(out / files["entries"], lambda p: p.write_text(lines))
    _atomic_write(out / files["vectors"], lambda p: _save_npy(p, vectors))
    index = build_faiss(vectors, options)
    _atomic_write(out / files["faiss"], lambda p: faiss.write_index(index, str(p)))
    meta = {**meta, "kind": options.kind(len(entries)), "count": len(entries),
            "generation": generation, "files": files}
    _atomic_write(out / META_FILE, lambda p: p.write_text(json.dumps(meta, indent=2)))
    remove_stale(out, files)
    return meta["kind"]


def remove_stale(out: Path, current: dict[str, str]) -> None:
    """Every data file of the index folder but ``current``'s: older generations, one a
    killed run wrote and never committed, and the temporary files of a killed write."""
    keep = set(current.values())
    names = {*LEGACY_FILES.values(), *(f"{stem}-*{suffix}" for stem, suffix in (
        ("entries", ".jsonl"), ("vectors", ".npy"), ("index", ".faiss")))}
    for pattern in names:
        for path in out.glob(pattern):
            if path.name not in keep:
                path.unlink(missing_ok=True)
    for path in out.glob(".*.tmp-*"):   # fsio.temporary_name
        path.unlink(missing_ok=True)


def _old_index(out: Path, root: Path, model_id: str) -> tuple[list[Entry], np.ndarray | None]:
    meta = read_meta(out)
    if meta is None:
        return [], None
    check_model(meta, model_id, out)
    if Path(meta["root"]) != root:
        raise TuwenError(f"{out} indexes {meta['root']}, not {root}: use a new --out folder")
    return read_entries(out, meta), read_vectors(out, meta)


def build_index(pipe, model_dir: str | Path, image_dir: str | Path, out: str | Path,
                options: IndexOptions | None = None, batch_size: int = 64,
                show_progress: bool = True, ranks=None) -> IndexReport | None:
    """Create or update the index of ``image_dir`` in ``out`` with ``pipe``'s model.

    ``ranks``: the processes of a launcher (``index_shards.Ranks``; default: read from the
    environment). Returns the report on the process that writes the index, None on the
    others."""
    from tuwen.apps.index_shards import Ranks

    ranks = ranks or Ranks.from_environment()
    start = time.perf_counter()
    options = options or IndexOptions()
    root, out = Path(image_dir).resolve(), Path(out)
    old, old_vectors = _old_index(out, root, pipe.model_id)
    plan = plan_update(scan(root), old)
    kept, vectors, skipped = ranks.embed(
        lambda share: embed_files(pipe, root, share, batch_size, show_progress and ranks.main),
        plan.todo, out)
    if not ranks.main:
        return None
    if old_vectors is not None:
        vectors = np.concatenate([old_vectors[plan.keep_rows], vectors])
    meta = {"format_version": FORMAT_VERSION, "model_id": pipe.model_id,
            "model_dir": str(Path(model_dir).resolve()), "root": str(root),
            "embed_dim": pipe.embed_dim, "options": options.model_dump()}
    kind = write_index(out, meta, plan.keep + kept, vectors, options)
    return IndexReport(len(plan.keep) + len(kept), len(kept), plan.removed, len(plan.keep),
                       kind, time.perf_counter() - start, skipped)
