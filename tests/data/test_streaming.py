"""Streaming WebDataset shards: split across ranks and workers, shuffled, mixed, resumable."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import format_fixtures as ff
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from tiny import task_collator
from tuwen.data.dataset import JointExample
from tuwen.data.images import ImageTransform
from tuwen.data.sources import ShardSource
from tuwen.data.streaming import Slot, StreamBatches, StreamingDataset, epoch_samples
from tuwen.data.tokenizer import train_tokenizer
from tuwen.errors import TuwenError
from tuwen.training.loop import TrainState, batches

TRANSFORM = ImageTransform(8)


def png(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (i * 37 % 256, i * 91 % 256, i * 13 % 256)).save(out, "PNG")
    return out.getvalue()


def make_shards(folder: Path, n_shards: int, per_shard: int, *, name: str = "s",
                bad: set[int] = frozenset(), weight: float = 1.0) -> ShardSource:
    """Samples ``{name}{i}``, captioned with their own key; ``bad`` ones hold no image."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for s in range(n_shards):
        members = []
        for j in range(per_shard):
            i = s * per_shard + j
            members += [(f"{name}{i:05d}.png", b"\x89PNG broken" if i in bad else png(i)),
                        (f"{name}{i:05d}.txt", f"{name}{i}".encode())]
        path = folder / f"{name}-{s:03d}.tar"
        path.write_bytes(ff.tar_bytes(members))
        shards.append(path)
    return ShardSource(name, tuple(shards), weight=weight, shuffle_buffer=4)


def keys_and_positions(items: list[dict]) -> dict:
    """A collate_fn for the tests: each item's caption (its key) and position."""
    return SimpleNamespace(
        keys=[it["captions"][0] if "captions" in it else it["bad"] for it in items],
        positions=[it["position"] for it in items])


def epoch_keys(source: ShardSource, rank: int, world: int, workers: int) -> dict[int, list]:
    dataset = StreamingDataset([source], TRANSFORM, seed=3, rank=rank, world_size=world,
                               max_epochs=2)
    loader = DataLoader(dataset, batch_size=3, num_workers=workers,
                        collate_fn=keys_and_positions)
    out: dict[int, list] = {0: [], 1: []}
    for batch in loader:
        for key, (_, epoch) in zip(batch.keys, batch.positions):
            out[epoch].append(key)
    return out


@pytest.mark.parametrize("n_shards", [5, 3])  # more shards than the 4 slots, and fewer
def test_two_workers_times_two_ranks_see_every_sample_once_per_epoch(tmp_path, n_shards):
    source = make_shards(tmp_path, n_shards, 7)
    every = sorted(f"s{i}" for i in range(n_shards * 7))
    per_rank = [epoch_keys(source, rank, 2, workers=2) for rank in (0, 1)]
    for epoch in (0, 1):
        seen = per_rank[0][epoch] + per_rank[1][epoch]
        assert sorted(seen) == every, epoch  # each sample once: none lost, none twice
        assert set(per_rank[0][epoch]).isdisjoint(per_rank[1][epoch])
    assert per_rank[0][0] != per_rank[0][1]  # a new order every epoch


def test_slots_are_dealt_whole_shards_or_every_nth_sample(tmp_path):
    source = make_shards(tmp_path, 2, 4)
    keys = [[s.key for s in epoch_samples(source, Slot(k, 4), seed=0, epoch=0)]
            for k in range(4)]
    assert [len(k) for k in keys] == [2, 2, 2, 2]  # 2 shards, 4 slots: samples dealt out
    source = make_shards(tmp_path / "b", 4, 3)
    keys = [[s.key for s in epoch_samples(source, Slot(k, 2), seed=0, epoch=0)]
            for k in range(2)]
    assert [len(k) for k in keys] == [6, 6] and not set(keys[0]) & set(keys[1])


def take(stream: StreamBatches, n: int) -> list[list[str]]:
    out = []
    for batch in stream:
        out.append(batch.keys)
        if len(out) == n:
            return out
    raise AssertionError("stream ended")


def stream_of(source: ShardSource, workers: int) -> StreamBatches:
    dataset = StreamingDataset([source], TRANSFORM, seed=1)
    return StreamBatches(DataLoader(dataset, batch_size=2, num_workers=workers,
                                    collate_fn=keys_and_positions))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_continues_exactly(tmp_path, workers):
    source = make_shards(tmp_path, 3, 5)
    uninterrupted = stream_of(source, workers)
    whole = take(uninterrupted, 12)  # 24 of 15 samples: into later epochs
    first = stream_of(source, workers)
    assert take(first, 5) == whole[:5]
    state = first.state_dict()
    assert sum(state["consumed"]) == 10 and state["batches"] == 5
    resumed = stream_of(source, workers)
    resumed.load_state_dict(state)
    assert take(resumed, 7) == whole[5:]
    assert resumed.state_dict() == uninterrupted.state_dict() and resumed.epoch >= 1


def test_a_truncated_shard_warns_and_the_others_go_on(tmp_path):
    source = make_shards(tmp_path, 3, 4)
    raw = source.shards[1].read_bytes()
    source.shards[1].write_bytes(raw[:2200])  # inside the third sample of shard 1
    with pytest.warns(RuntimeWarning, match=r"s-001\.tar: truncated or corrupt tar after "
                                            r"\d samples.*rest of the shard skipped"):
        items = list(StreamingDataset([source], TRANSFORM, max_epochs=1))
    keys = {it["captions"][0] for it in items}
    assert {f"s{i}" for i in (0, 1, 2, 3, 8, 9, 10, 11)} <= keys  # shards 0 and 2 whole
    assert not keys & {"s6", "s7"}  # shard 1 after the damage
    assert len(keys) < 12


def test_sources_mix_by_weight_times_size(tmp_path):
    a = make_shards(tmp_path / "a", 2, 5, name="a")
    b = make_shards(tmp_path / "b", 2, 5, name="b", weight=2)
    image = tmp_path / "m.png"
    image.write_bytes(png(1))
    examples = [JointExample(i, image, (f"m{i}",), ()) for i in range(10)]
    dataset = StreamingDataset([a, b], TRANSFORM, examples=examples, seed=0)
    assert dataset.sizes == [10, 20, 10]
    counts: Counter = Counter()
    for n, item in enumerate(dataset):
        counts[item["captions"][0][0]] += 1
        if n == 799:
            break
    assert abs(counts["a"] / 800 - 0.25) < 0.05
    assert abs(counts["b"] / 800 - 0.5) < 0.05
    assert abs(counts["m"] / 800 - 0.25) < 0.05


def test_bad_streamed_samples_are_counted_and_bounded(tmp_path):
    """Undecodable images become skipped samples; past max_bad_fraction the run stops."""
    source = make_shards(tmp_path, 2, 60, bad=set(range(0, 120, 3)))  # a third are broken
    tok = train_tokenizer([f"s{i}" for i in range(120)], vocab_size=40)
    dataset = StreamingDataset([source], TRANSFORM, seed=0)
    stream = StreamBatches(DataLoader(dataset, batch_size=8,
                                      collate_fn=task_collator(tok, None, 8)))
    state = TrainState()
    got = batches(stream, state, max_bad_fraction=0.5)
    for _ in range(15):
        batch = next(got)
        assert batch.pixel_values.shape[0] == batch.size
    assert state.seen == 120 and state.skipped == 40
    assert state.data == stream.state_dict() and state.data["consumed"] == [120]
    state = TrainState()
    with pytest.raises(TuwenError, match=r"could not be loaded, more than "
                                         r"data\.max_bad_fraction=0\.2"):
        for _ in batches(StreamBatches(DataLoader(dataset, batch_size=8, collate_fn=task_collator(
                tok, None, 8))), state, max_bad_fraction=0.2):
            pass
    assert 100 <= state.seen <= 112


def test_streamed_augmentation_is_seeded_per_sample(tmp_path):
    import torch

    from tuwen.config import AugmentConfig
    from tuwen.data.augment import build_train_transform

    augment = build_train_transform(AugmentConfig(), ImageTransform(8))
    source = make_shards(tmp_path, 1, 4)

    def pixels(transform):
        return [it["pixel_values"] for it in StreamingDataset([source], transform, seed=5,
                                                              max_epochs=1)]

    first, again, plain = pixels(augment), pixels(augment), pixels(TRANSFORM)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert any(not torch.equal(a, p) for a, p in zip(first, plain))


@pytest.mark.slow  # three training runs with worker processes
def test_a_streamed_training_run_resumes_exactly(tmp_path):
    """Killed after step 3 of 6 (mid-epoch, 2 loader workers), resumed: the same weights as
    the uninterrupted run, so the stream continued with the very same batches."""
    import json

    import torch
    from safetensors.torch import load_file

    from tiny import tiny_overrides
    from tuwen.config import load_config
    from tuwen.training.loop import train

    source = ff.write_webdataset(tmp_path)
    sets = tiny_overrides(tmp_path, batch_size=2, max_steps=6, save_every=3) + [
        f"data.sources=[{json.dumps(source)}]", "data.num_workers=2",
        "data.tokenizer.vocab_size=60", "train.tasks.vqa=0"]

    class Preempted(Exception):
        pass

    def preempt(step, model):
        if step == 3:
            raise Preempted

    train(load_config(None, sets), tmp_path / "full", show_progress=False)
    with pytest.raises(Preempted):
        train(load_config(None, sets), tmp_path / "part", show_progress=False,
              on_checkpoint=preempt)
    train(load_config(None, sets), tmp_path / "part", resume=True, show_progress=False)
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "part" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
