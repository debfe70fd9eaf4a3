"""From a data config to records, a tokenizer and an answer vocabulary.

Every source in ``data.sources`` is read for the split (:mod:`tuwen.data.sources`) and the
results are pooled; paths are relative to ``data.root``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tuwen.config import DataConfig
from tuwen.data.answers import AnswerVocab
from tuwen.data.readers_llava import IMAGE_TOKEN
from tuwen.data.readers_wds import shard_texts
from tuwen.data.records import Conversation, ImageCaptions, ImageClass, VQAItem, sample_key
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
    classes: list[ImageClass] = field(default_factory=list)  # image folders: class labels
    # image file (a text-only conversation: itself) -> repeat factor per epoch: the largest
    # weight of the sources that have it
    weights: dict[Path | Conversation, float] = field(default_factory=dict)
    streams: list[ShardSource] = field(default_factory=list)  # webdataset sources, training
    conversations: list[Conversation] = field(default_factory=list)  # llava sources: chat

    def texts(self) -> list[str]:
        texts = [c for r in self.captions for c in r.captions]
        texts += [q.question for q in self.questions]
        # the answers too: generative VQA writes them ("2" was [UNK] when only the
        # captions' "two" was seen, and decoded to an empty answer)
        texts += [q.multiple_choice_answer for q in self.questions]
        texts += [text.replace(IMAGE_TOKEN, " ") for c in self.conversations
                  for _, text in c.turns]
        for stream in self.streams:
            texts += shard_texts(list(stream.shards), stream.caption_key, MAX_STREAM_TEXTS)
        return texts

    def add(self, part: SourceData) -> None:
        labels = part.labels
        self.captions += labels.captions
        self.questions += labels.questions
        self.skipped += labels.skipped
        self.classes += labels.classes
        self.conversations += labels.conversations
        for item in [*labels.captions, *labels.questions, *labels.conversations]:
            key = sample_key(item)
            self.weights[key] = max(self.weights.get(key, 0.0), part.weight)
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
    if not (data.captions or data.questions or data.streams or data.classes
            or data.conversations):
        raise DataError(root, f"split {split!r} has no usable captions, questions, classes "
                              "or conversations")
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
    """The labels ``data`` has: ``caption`` (captions or caption shards), ``vqa`` (questions),
    ``class`` (class names), ``chat`` (conversations)."""
    has = {"caption": bool(data.captions or data.streams), "vqa": bool(data.questions),
           "class": bool(data.classes), "chat": bool(data.conversations)}
    return frozenset(label for label, present in has.items() if present)
