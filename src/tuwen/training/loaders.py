"""The training batches: the loader for the train split, endless from a saved data position,
bad samples counted and bounded, grouped into the micro-batches of one optimiser step."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tuwen.config import Config, DataConfig
from tuwen.data.augment import build_train_transform
from tuwen.data.batch import Batch
from tuwen.data.dataset import (
    Collator,
    EpochBatchSampler,
    JointDataset,
    MapBatches,
    TextTools,
    example_repeats,
    join_by_image,
)
from tuwen.data.images import ImageTransform
from tuwen.data.streaming import StreamBatches, streaming_batches
from tuwen.data.text import TextNormalizer
from tuwen.errors import TuwenError
from tuwen.tasks.table import part_collates
from tuwen.training.assets import Assets
from tuwen.training.distributed import ShardedBatchSampler
from tuwen.training.state import TrainState


def text_tools(config: Config, assets: Assets) -> TextTools:
    return TextTools(assets.tokenizer, assets.text_tokenizer or assets.tokenizer,
                     TextNormalizer.from_config(config.data.text), config.data.max_text_length,
                     assets.spec.chat, assets.vocab)


def train_collator(config: Config, assets: Assets) -> Collator:
    """Label rows for the text encoder, then each task's part (tasks.table)."""
    tools = text_tools(config, assets)
    return Collator(tools, part_collates(tools, config, assets.spec, assets.train))


def loader_options(data: DataConfig) -> dict:
    """DataLoader options that only apply with worker processes."""
    if not data.num_workers:
        return {}
    return {"prefetch_factor": data.prefetch_factor, "persistent_workers": data.persistent_workers}


def build_loader(config: Config, assets: Assets, rank: int = 0,
                 world_size: int = 1) -> MapBatches | StreamBatches:
    """The endless training batches, with the data position as state_dict()."""
    data, tcfg = config.data, config.train
    transform = build_train_transform(data.augment, ImageTransform.for_model(assets.spec))
    examples = join_by_image(assets.train.captions, assets.train.questions,
                             assets.train.conversations)
    repeats = example_repeats(examples, assets.train.weights)
    collate = train_collator(config, assets)
    if assets.train.streams:  # webdataset: each rank and worker streams its own shards
        return streaming_batches(assets.train.streams, transform, collate,
                                 batch_size=tcfg.batch_size, num_workers=data.num_workers,
                                 seed=tcfg.seed, examples=examples, repeats=repeats,
                                 captions_per_image=data.captions_per_image,
                                 questions_per_image=data.questions_per_image, rank=rank,
                                 world_size=world_size, **loader_options(data))
    dataset = JointDataset(examples, transform, seed=tcfg.seed,
                           captions_per_image=data.captions_per_image,
                           questions_per_image=data.questions_per_image)
    return map_batches(dataset, collate, config, repeats, rank, world_size)


def map_batches(dataset: JointDataset, collate: Collator, config: Config,
                repeats: list[float] | None, rank: int, world_size: int) -> MapBatches:
    """Epochs of shuffled batches of an indexed dataset, each rank its share of each one."""
    tcfg = config.train
    sampler = EpochBatchSampler(len(dataset), tcfg.batch_size, tcfg.seed, repeats=repeats)
    if world_size > 1:  # each rank its share of every global batch
        sampler = ShardedBatchSampler(sampler, rank, world_size)
    if len(sampler) == 0:
        raise TuwenError(f"train split has {len(dataset)} images, fewer than one batch of "
                         f"train.batch_size={tcfg.batch_size}")
    # The loader gets its own generator: starting an iterator draws a worker seed, and from
    # the global RNG that draw would shift every later random number after a resume.
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=config.data.num_workers,
                        collate_fn=collate,
                        generator=torch.Generator().manual_seed(tcfg.seed),
                        **loader_options(config.data))
    return MapBatches(loader, sampler)


def batches(source: MapBatches | StreamBatches, state: TrainState,
            max_bad_fraction: float) -> Iterator[Batch]:
    """Endless batches from the saved data position on; keeps ``state`` current."""
    if state.data:
        source.load_state_dict(state.data)
    for batch in source:
        state.data, state.epoch = source.state_dict(), source.epoch
        count_bad(state, batch, max_bad_fraction)
        if batch.size:
            yield batch


def count_bad(state: TrainState, batch: Batch, max_fraction: float) -> None:
    state.skipped += batch.n_skipped
    state.seen += batch.n_skipped + batch.size
    for reason in batch.skipped:
        tqdm.write(f"skipped sample: {reason}")
    # A few bad files early on should not kill a run; judge the fraction on a fair sample.
    if state.seen >= 100 and state.skipped > max_fraction * state.seen:
        raise TuwenError(f"{state.skipped} of {state.seen} samples could not be loaded, more "
                         f"than data.max_bad_fraction={max_fraction}; last: "
                         f"{batch.skipped[-1] if batch.skipped else 'see log above'}")


def micro_batch_groups(stream: Iterator[Batch], size: int) -> Iterator[list[Batch]]:
    """The micro-batches of each optimiser step (``train.grad_accumulation`` of them)."""
    while True:
        yield [next(stream) for _ in range(size)]
