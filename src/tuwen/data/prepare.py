"""From a data config to records, a tokenizer and an answer vocabulary.

Paths in the data config are relative to ``data.root``; ``{split}`` in a VQA file name
is replaced by the split name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tuwen.config import DataConfig
from tuwen.data.answers import AnswerVocab
from tuwen.data.readers import read_karpathy, read_vqav2
from tuwen.data.records import ImageCaptions, VQAItem
from tuwen.data.tokenizer import train_tokenizer
from tuwen.errors import DataError


@dataclass
class SplitData:
    split: str
    captions: list[ImageCaptions] = field(default_factory=list)
    questions: list[VQAItem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def texts(self) -> list[str]:
        return [c for r in self.captions for c in r.captions] + [q.question for q in self.questions]


def _resolve(root: Path, relative: str | None) -> Path | None:
    return None if relative is None else root / relative


def read_split(cfg: DataConfig, split: str) -> SplitData:
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(root, "data folder not found (for the built-in data run "
                              "`tuwen data shapes data/shapes`)")
    data = SplitData(split)
    if cfg.captions is not None:
        read = read_karpathy(root / cfg.captions.path, splits=[split],
                             image_root=_resolve(root, cfg.captions.image_root))
        data.captions, data.skipped = read.records, data.skipped + read.skipped
    if cfg.vqa is not None:
        questions = root / cfg.vqa.questions.format(split=split)
        annotations = root / cfg.vqa.annotations.format(split=split)
        read = read_vqav2(questions, annotations, image_pattern=cfg.vqa.image_pattern,
                          image_root=_resolve(root, cfg.vqa.image_root) or root)
        data.questions, data.skipped = read.records, data.skipped + read.skipped
    if not data.captions and not data.questions:
        raise DataError(root, f"split {split!r} has no usable captions or questions")
    return data


def build_answer_vocab(train: SplitData, top_k: int) -> AnswerVocab | None:
    if not train.questions:
        return None
    return AnswerVocab.build([q.multiple_choice_answer for q in train.questions], top_k)


def build_tokenizer(train: SplitData, vocab_size: int):
    """A WordPiece tokenizer trained on the training captions and questions only."""
    return train_tokenizer(train.texts(), vocab_size=vocab_size)
