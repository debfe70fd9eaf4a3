"""Embedding an image collection on several processes (``torchrun`` / ``accelerate launch``).

Each process embeds every ``world``-th new file from its rank on and writes its shard into
``INDEX_DIR/.shards/``; after a barrier the first process reads the shards back in rank
order. The processes share the index folder (one machine, or a shared file system).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHARD_DIR = ".shards"
Embedded = tuple[list, np.ndarray, list[str]]   # entries, their vectors, skipped files


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    state: object | None = None   # accelerate.PartialState when world > 1

    @classmethod
    def from_environment(cls) -> Ranks:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        import torch
        from accelerate import PartialState  # the launcher's environment, as training reads it

        state = PartialState(cpu=not torch.cuda.is_available())
        return cls(state.process_index, state.num_processes, state)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> str | None:
        """This process's device under a launcher (``cuda:LOCAL_RANK`` on GPUs, so each rank
        embeds on its own); None for one process (the Pipeline's own default)."""
        return None if self.state is None else str(self.state.device)

    def embed(self, fn: Callable[[list], Embedded], todo: list, out: Path) -> Embedded:
        """``fn`` over this process's share of ``todo``; on the first process, every
        process's results merged in rank order."""
        if self.world == 1:
            return fn(todo)
        entries, vectors, skipped = fn(todo[self.rank:: self.world])
        shards = out / SHARD_DIR
        shards.mkdir(parents=True, exist_ok=True)
        write_shard(shards, self.rank, entries, vectors, skipped)
        self.state.wait_for_everyone()
        if not self.main:
            return entries, vectors, skipped
        merged = merge_shards(shards, self.world, entry_type=type(todo[0]) if todo else None)
        shutil.rmtree(shards)
        return merged


def write_shard(shards: Path, rank: int, entries: list, vectors: np.ndarray,
                skipped: list[str]) -> None:
    np.save(shards / f"rank-{rank}.npy", vectors)
    (shards / f"rank-{rank}.json").write_text(json.dumps(
        {"entries": [e.__dict__ for e in entries], "skipped": skipped}))


def merge_shards(shards: Path, world: int, entry_type) -> Embedded:
    entries, vectors, skipped = [], [], []
    for rank in range(world):
        part = json.loads((shards / f"rank-{rank}.json").read_text())
        entries += [entry_type(**e) for e in part["entries"]]
        skipped += part["skipped"]
        vectors.append(np.load(shards / f"rank-{rank}.npy"))
    return entries, np.concatenate(vectors), skipped
