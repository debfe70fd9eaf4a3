"""Streaming training data: WebDataset shards (and any map-style sources mixed in with them).

Every process rank and every DataLoader worker is one *slot* of ``world_size * num_workers``.
Per epoch the shard list is shuffled the same way in every slot (seeded by seed and epoch),
then dealt out: with at least as many shards as slots, slot k reads shards k, k + n, ...;
with fewer, every slot reads every shard and keeps samples k, k + n, .... Either way no
sample is seen twice per epoch across ranks and workers. Each slot then shuffles through a
buffer (seeded by seed, slot and epoch), so a slot's stream is a pure function of
(seed, slot): resuming replays it without decoding images and skips what was consumed.

Several sources are mixed per sample, each drawn with probability proportional to
``weight * size`` (so weights mean the same as in map-style runs: times each sample is seen
per epoch relative to the others). Each stream cycles through its own epochs.
"""

from __future__ import annotations

import itertools
import os
import random
import tarfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tuwen.data.augment import TrainTransform
from tuwen.data.dataset import EpochBatchSampler, JointExample, drawn_item
from tuwen.data.embedded import decode_image
from tuwen.data.images import load_image
from tuwen.data.readers_wds import IMAGE_EXTENSIONS, ShardSample, base_plus_ext, iter_shard
from tuwen.data.sources import ShardSource
from tuwen.errors import DataError, TuwenError


@dataclass(frozen=True)
class Slot:
    index: int  # rank * num_workers + worker
    count: int  # world_size * num_workers


def process_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): explicit, else torch.distributed, else the launcher's environment
    (torchrun and accelerate set RANK and WORLD_SIZE), else (0, 1)."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


# --- one webdataset source in one slot ----------------------------------------------------


def epoch_samples(source: ShardSource, slot: Slot, seed: int,
                  epoch: int) -> Iterator[ShardSample]:
    """This slot's share of one epoch of ``source``, before shuffling."""
    shards = list(source.shards)
    random.Random(seed * 1_000_003 + epoch).shuffle(shards)
    if len(shards) >= slot.count:
        for shard in shards[slot.index::slot.count]:
            yield from iter_shard(shard, source.caption_key)
        return
    n = 0
    for shard in shards:  # fewer shards than slots: deal out samples instead
        for sample in iter_shard(shard, source.caption_key):
            if n % slot.count == slot.index:
                yield sample
            n += 1


def shuffled(items: Iterable, buffer: int, rng: np.random.Generator) -> Iterator:
    """Shuffle through a buffer of ``buffer`` items (0 or 1: the order is kept)."""
    held: list = []
    for item in items:
        if len(held) < max(buffer, 1):
            held.append(item)
            continue
        j = int(rng.integers(len(held)))
        yield held[j]
        held[j] = item
    rng.shuffle(held)
    yield from held


def shard_stream(source: ShardSource, slot: Slot, seed: int,
                 max_epochs: int | None = None) -> Iterator[tuple[int, ShardSample]]:
    """(epoch, sample) for ever (or ``max_epochs``); ends if a whole epoch has nothing."""
    for epoch in itertools.count() if max_epochs is None else range(max_epochs):
        rng = np.random.default_rng([seed, slot.index, epoch])
        empty = True
        for sample in shuffled(epoch_samples(source, slot, seed, epoch), source.shuffle_buffer,
                               rng):
            empty = False
            yield epoch, sample
        if empty:
            return


def example_stream(examples: Sequence[JointExample], repeats: Sequence[float] | None,
                   slot: Slot, seed: int,
                   max_epochs: int | None = None) -> Iterator[tuple[int, tuple[int, JointExample]]]:
    """Map-style examples as a stream: each epoch's (weighted) order, dealt out to slots."""
    order = EpochBatchSampler(len(examples), 1, seed, repeats=repeats)
    for epoch in itertools.count() if max_epochs is None else range(max_epochs):
        order.set_position(epoch)
        share = order.order()[slot.index::slot.count]
        if not share:  # fewer examples than slots: this slot has none
            return
        for index in share:
            yield epoch, (index, examples[index % len(examples)])


def count_samples(source: ShardSource) -> int:
    """Samples (keys with an image) in the shards, from the tar headers alone."""
    keys = set()
    for shard in source.shards:
        try:
            with tarfile.open(shard) as tar:
                for member in tar:
                    stem, ext = base_plus_ext(member.name)
                    if member.isreg() and stem is not None and ext.lower() in IMAGE_EXTENSIONS:
                        keys.add((shard, stem))
        except (tarfile.TarError, OSError, EOFError):
            continue  # a damaged shard counts what was readable; iter_shard warns later
    return len(keys)


def mixed(streams: list[Iterator], sizes: Sequence[float], rng: np.random.Generator) -> Iterator:
    """Draw from ``streams`` with probabilities proportional to ``sizes``, until all end."""
    streams, sizes = list(streams), np.asarray(sizes, dtype=np.float64)
    while streams:
        if len(streams) == 1:
            yield from streams[0]
            return
        i = int(rng.choice(len(streams), p=sizes / sizes.sum()))
        try:
            yield next(streams[i])
        except StopIteration:
            del streams[i]
            sizes = np.delete(sizes, i)


# --- the dataset ---------------------------------------------------------------------------


class StreamingDataset(IterableDataset):
    """Training items (as :class:`~tuwen.data.dataset.JointDataset` makes them) from webdataset
    shards and map-style examples, split across ranks and workers, shuffled, mixed.

    Every item carries ``position`` = (logical worker, epoch) for :class:`StreamBatches`.
    ``skip[w]`` items of logical worker ``w`` are passed over undecoded (resume), and
    ``rotation`` maps physical worker ``i`` to logical worker ``(i + rotation) % workers``.
    """

    def __init__(self, shards: Sequence[ShardSource], transform: Callable, *,
                 examples: Sequence[JointExample] = (), repeats: Sequence[float] | None = None,
                 seed: int = 0, captions_per_image: int = 1, questions_per_image: int = 1,
                 rank: int | None = None, world_size: int | None = None,
                 max_epochs: int | None = None) -> None:
        self.shards, self.examples, self.repeats = list(shards), list(examples), repeats
        self.transform, self.seed = transform, seed
        self.captions_per_image, self.questions_per_image = captions_per_image, questions_per_image
        self.rank, self.world_size, self.max_epochs = rank, world_size, max_epochs
        self.skip: list[int] = []
        self.rotation = 0
        self.sizes = self._sizes()

    def _sizes(self) -> list[float]:
        """Mixing weights: weight x samples per source (not needed for a single source)."""
        n_streams = len(self.shards) + bool(self.examples)
        if n_streams == 1:
            return [1.0]
        sizes = [s.weight * count_samples(s) for s in self.shards]
        if self.examples:
            sizes.append(float(sum(self.repeats)) if self.repeats is not None
                         else float(len(self.examples)))
        return sizes

    def slot(self) -> tuple[Slot, int]:
        """This worker's slot and logical worker index."""
        info = get_worker_info()
        physical, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        worker = (physical + self.rotation) % workers
        rank, world = process_rank(self.rank, self.world_size)
        return Slot(rank * workers + worker, world * workers), worker

    def raw(self, slot: Slot) -> Iterator[tuple[int, object]]:
        """(epoch, undecoded item) of this slot, mixed over the sources."""
        streams = [shard_stream(s, slot, self.seed, self.max_epochs) for s in self.shards]
        if self.examples:
            streams.append(example_stream(self.examples, self.repeats, slot, self.seed,
                                          self.max_epochs))
        return mixed(streams, self.sizes, np.random.default_rng([self.seed, slot.index, 7]))

    def __iter__(self) -> Iterator[dict]:
        slot, worker = self.slot()
        skip = self.skip[worker] if worker < len(self.skip) else 0
        for n, (epoch, item) in enumerate(self.raw(slot)):
            if n < skip:
                continue
            out = self.decode(item, np.random.default_rng([self.seed, slot.index, n]),
                              np.random.default_rng([self.seed, slot.index, n, 1]))
            out["position"] = (worker, epoch)
            yield out

    def decode(self, item, rng: np.random.Generator, augment_rng: np.random.Generator) -> dict:
        """Image -> tensor and drawn texts, or ``{"bad": reason}`` (counted by the collator).

        Augmentation (a ``TrainTransform``) draws from its own generator, so that turning it
        on or off leaves the caption draws as they were."""
        min_side = getattr(self.transform, "min_side", None)
        try:
            if isinstance(item, ShardSample):
                if item.problem is not None:
                    return {"bad": f"{item.name}: {item.problem}"}
                image = decode_image(item.image, item.name, min_side)
                example = JointExample(None, None, item.captions, ())
            else:
                _, example = item
                image = (None if example.image_path is None  # a text-only conversation
                         else load_image(example.image_path, min_side))
        except DataError as err:
            return {"bad": str(err)}
        pixels = (None if image is None else self.transform(image, augment_rng)
                  if isinstance(self.transform, TrainTransform) else self.transform(image))
        return drawn_item(example, pixels, rng, self.captions_per_image, self.questions_per_image)


class StreamBatches:
    """Endless batches from a streaming DataLoader, with a resumable position.

    Each batch comes whole from one worker, in round-robin order; the position is how many
    items each (logical) worker has delivered and how many batches were taken. Every rank
    consumes the same number of equal batches, so one rank's position serves all ranks.
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader, self.dataset = loader, loader.dataset
        self.workers = max(1, loader.num_workers)
        self.consumed, self.batches, self.epoch = [0] * self.workers, 0, 0

    def __iter__(self) -> Iterator[dict]:
        while True:
            self.dataset.skip = list(self.consumed)
            self.dataset.rotation = self.batches % self.workers
            delivered = False
            for batch in self.loader:
                delivered = True
                for worker, epoch in batch.positions:
                    self.consumed[worker] += 1
                    self.epoch = max(self.epoch, epoch)
                self.batches += 1
                yield batch
            if not delivered:
                raise TuwenError("the streamed training data yields no samples (every shard "
                                 "empty or damaged?)")

    def state_dict(self) -> dict:
        return {"consumed": list(self.consumed), "batches": self.batches, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        if len(state["consumed"]) != self.workers:
            warnings.warn(f"data position saved with {len(state['consumed'])} loader workers, "
                          f"now {self.workers}: the stream starts over", RuntimeWarning,
                          stacklevel=2)
            return
        self.consumed = [int(c) for c in state["consumed"]]
        self.batches, self.epoch = int(state["batches"]), int(state["epoch"])


def streaming_batches(shards: Sequence[ShardSource], transform: Callable, collate: Callable, *,
                      batch_size: int, num_workers: int = 0, seed: int = 0,
                      examples: Sequence[JointExample] = (),
                      repeats: Sequence[float] | None = None, captions_per_image: int = 1,
                      questions_per_image: int = 1, rank: int | None = None,
                      world_size: int | None = None, **loader_kwargs) -> StreamBatches:
    """The training batch source of a run with webdataset sources (``rank``/``world_size``
    default to the launcher's; do not let Accelerate shard this loader again)."""
    dataset = StreamingDataset(shards, transform, examples=examples, repeats=repeats, seed=seed,
                               captions_per_image=captions_per_image,
                               questions_per_image=questions_per_image, rank=rank,
                               world_size=world_size)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                        collate_fn=collate, **loader_kwargs)
    return StreamBatches(loader)
