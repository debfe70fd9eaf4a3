"""The records every reader returns, whatever the file format on disk.

Readers turn each format (Karpathy JSON, VQAv2, ...) into these few frozen dataclasses,
so everything downstream (datasets, batching, evaluation) knows one shape per task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ImageCaptions:
    """One image with all its reference captions (Karpathy / COCO style)."""

    image_id: int | str
    image_path: Path
    split: str
    captions: tuple[str, ...]


@dataclass(frozen=True)
class VQAItem:
    """One VQAv2 question with its annotation joined in."""

    question_id: int
    image_id: int | str
    image_path: Path
    question: str
    answers: tuple[str, ...]  # the raw annotator answers (10 in VQAv2), unnormalised
    multiple_choice_answer: str
    question_type: str
    answer_type: str


@dataclass
class ReadResult(Generic[T]):
    """What a reader returns: the usable records and why the others were left out.

    ``skipped`` holds one human-readable reason per skipped record or caption, e.g.
    ``"captions.json record 12: empty caption"``, so a run can report and bound them.
    """

    records: list[T] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ImageClass:
    """One image with its class name (an image folder: one folder per class)."""

    image_id: int | str
    image_path: Path
    split: str
    label: str


@dataclass(frozen=True)
class Conversation:
    """One instruction conversation (LLaVA's format): user and assistant turns, in order,
    about one image or none (a text-only conversation)."""

    conversation_id: int | str
    image_id: int | str | None        # None: text-only
    image_path: Path | None           # None: text-only
    split: str
    turns: tuple[tuple[str, str], ...]  # (role, text); role "user" or "assistant"


@dataclass
class Labelled:
    """What a reader of a mixed format (JSONL, CSV, HF datasets, tar shards, LLaVA) returns:
    the captioned images, questions and conversations it found, and why other records were
    left out."""

    captions: list[ImageCaptions] = field(default_factory=list)
    questions: list[VQAItem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    classes: list[ImageClass] = field(default_factory=list)
    conversations: list[Conversation] = field(default_factory=list)


def sample_key(item: ImageCaptions | VQAItem | Conversation) -> Path | Conversation:
    """What a record's training example is keyed by: its image file; a text-only
    conversation is an example of its own."""
    return item.image_path if item.image_path is not None else item
