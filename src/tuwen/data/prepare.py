"""From a data config to records, a tokenizer and an answer vocabulary.

Every source in ``data.sources`` is read for the split (:mod:`tuwen.data.sources`) and the
results are pooled; paths are relative to ``data.root``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tuwen.config import TASKS, Config, DataConfig, TaskWeights
from tuwen.data.answers import AnswerVocab
from tuwen.data.readers_wds import shard_texts
from tuwen.data.records import ImageCaptions, VQAItem
from tuwen.data.sources import ShardSource, SourceData, read_source
from tuwen.data.tokenizer import train_tokenizer
from tuwen.errors import DataError

# Captions read from streamed shards to train the tokenizer on (a sample is plenty)
MAX_STREAM_TEXTS = 200_000


@dataclass
class SplitData:
    split: str
    captions: list[ImageCaptions] = field(default_factory=list)
    questions: list[VQAItem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    # image file -> repeat factor per epoch: the largest weight of the sources that have it
    weights: dict[Path, float] = field(default_factory=dict)
    streams: list[ShardSource] = field(default_factory=list)  # webdataset sources, training

    def texts(self) -> list[str]:
        texts = [c for r in self.captions for c in r.captions]
        texts += [q.question for q in self.questions]
        # the answers too: generative VQA writes them ("2" was [UNK] when only the
        # captions' "two" was seen, and decoded to an empty answer)
        texts += [q.multiple_choice_answer for q in self.questions]
        for stream in self.streams:
            texts += shard_texts(list(stream.shards), stream.caption_key, MAX_STREAM_TEXTS)
        return texts

    def add(self, part: SourceData) -> None:
        labels = part.labels
        self.captions += labels.captions
        self.questions += labels.questions
        self.skipped += labels.skipped
        for item in [*labels.captions, *labels.questions]:
            self.weights[item.image_path] = max(self.weights.get(item.image_path, 0.0),
                                                part.weight)
        if part.stream is not None:
            self.streams.append(part.stream)


def cache_dir(cfg: DataConfig) -> Path:
    """Where images held inside other files (HF datasets, tar shards) are written."""
    return Path(cfg.root) / (cfg.cache_dir if cfg.cache_dir is not None else ".cache")


def read_split(cfg: DataConfig, split: str, *, stream: bool = False) -> SplitData:
    """Every source's records for ``split``; ``stream=True`` leaves webdataset shards to be
    streamed (training) instead of reading them into records."""
    root = check_root(cfg)
    data = SplitData(split)
    for source in cfg.sources:
        data.add(read_source(source, root, split, cache_dir(cfg), stream=stream))
    if not data.captions and not data.questions and not data.streams:
        raise DataError(root, f"split {split!r} has no usable captions or questions")
    return data


def check_root(cfg: DataConfig) -> Path:
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(root, "data folder not found (for the built-in data run "
                              "`tuwen data shapes data/shapes`)")
    return root


def build_answer_vocab(train: SplitData, top_k: int) -> AnswerVocab | None:
    if not train.questions:
        return None
    return AnswerVocab.build([q.multiple_choice_answer for q in train.questions], top_k)


def build_tokenizer(train: SplitData, vocab_size: int):
    """A WordPiece tokenizer trained on the training captions, questions and answers only."""
    return train_tokenizer(train.texts(), vocab_size=vocab_size)


def split_labels(data: SplitData) -> frozenset[str]:
    """The labels ``data`` has: ``caption`` (captions or caption shards), ``vqa`` (questions)."""
    return frozenset({"caption"} if data.captions or data.streams else set()) | frozenset(
        {"vqa"} if data.questions else set())


def check_train_labels(train: SplitData, tasks: dict[str, float]) -> None:
    """Every task with a weight needs its labels in the training split."""
    has = split_labels(train)
    if "caption" not in has and any(t in tasks for t in ("caption", "itc", "itm")):
        raise DataError(train.split, "no captions in this split, but train.tasks weighs "
                                     "caption/itc/itm (set their weights to 0)")
    if "vqa" not in has and "vqa" in tasks:
        raise DataError(train.split, "no questions in this split, but train.tasks weighs vqa "
                                     "(set its weight to 0)")


def train_tasks(tasks: TaskWeights, train: SplitData) -> TaskWeights:
    """``train.tasks`` for this training split: a weight the config sets > 0 needs its labels
    (an error otherwise); an unset weight is 1 when the split has the labels, else 0."""
    check_train_labels(train, {name: w for name, w in tasks.given().items() if w > 0})
    return tasks.resolved(split_labels(train))


def with_train_tasks(config: Config, train: SplitData,
                     log: Callable[[str], object] = print) -> Config:
    """``config`` with ``train.tasks`` decided by the training split's labels; ``log`` says
    which tasks run and why a task left unset does not."""
    tasks = train_tasks(config.train.tasks, train)
    running = tasks.active()
    if not running and not config.train.task_schedule:
        raise DataError(train.split, "no task to train: the tasks with a weight > 0 have no "
                                     "labels in this split")
    line = "training tasks: " + ", ".join(f"{name} (weight {w:g})" for name, w in running.items())
    unset = [name for name in TASKS if getattr(config.train.tasks, name) is None]
    if off := [name for name in unset if name not in running]:
        line += f"; not {', '.join(off)}: split {train.split!r} has no " + (
            "questions" if off == ["vqa"] else "captions")
    log(line)
    return config.model_copy(update={"train": config.train.model_copy(update={"tasks": tasks})})
