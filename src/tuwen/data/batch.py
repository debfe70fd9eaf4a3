"""The batch that crosses from data to tasks: one typed dataclass, every field documented once.

A batch holds the images, the label rows each kind of data gives (captions and questions,
read by the text encoder), and one optional typed part per task, which that task's collate
function filled (``tuwen.tasks``: the caption task's decoder sequences, ITM's swapped
captions, VQA's answer targets, ...). ``Batch.to(device)`` moves every tensor in it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from tuwen.data.records import Conversation, VQAItem


@dataclass
class CaptionRows:
    """A batch's captions as the text encoder reads them (ITC, ITM and the caption task's
    rows align with these): one row per caption drawn, image by image."""

    image: torch.Tensor           # (R,) each row's image: an index into Batch.pixel_values
    first: torch.Tensor           # (R,) bool: the first caption drawn for its image
    input_ids: torch.Tensor       # (R, L) the retrieval text, in the text encoder's tokens
    attention_mask: torch.Tensor  # (R, L)
    texts: list[str] = field(default_factory=list)  # the raw captions, row by row
    retrieval_texts: list[str] = field(default_factory=list)  # as input_ids hold them


@dataclass
class QuestionRows:
    """A batch's questions as the text encoder reads them."""

    image: torch.Tensor           # (Q,) each question's image
    input_ids: torch.Tensor       # (Q, L) the normalised question, text-encoder tokens
    attention_mask: torch.Tensor  # (Q, L)
    items: list[VQAItem] = field(default_factory=list)  # the questions with their answers


@dataclass
class ConversationRows:
    """A batch's conversations (LLaVA-format instruction data), one drawn per sample."""

    image: torch.Tensor           # (C,) each conversation's image; -1: a text-only one
    items: list[Conversation] = field(default_factory=list)


@dataclass
class Batch:
    """One (micro-)batch of images with their labels.

    A text-only conversation is a sample without an image: it counts in ``size`` and has a
    row in ``conversations`` (image -1), and nothing in ``pixel_values``."""

    pixel_values: torch.Tensor | None  # (B_img, 3, H, W); None when no sample has an image
    size: int                          # samples that loaded (B_img with images, the rest text)
    skipped: list[str] = field(default_factory=list)  # why each failed image was dropped
    captions: CaptionRows | None = None
    questions: QuestionRows | None = None
    conversations: ConversationRows | None = None
    parts: dict[str, Any] = field(default_factory=dict)  # task name -> its typed part
    positions: list | None = None      # streamed: (worker, epoch) of each item drawn

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def part(self, task: str) -> Any:
        """The part ``task``'s collate function filled, or None."""
        return self.parts.get(task)

    def to(self, device: torch.device | str) -> Batch:
        return _moved(self, device)


def _moved(value: Any, device: torch.device | str) -> Any:
    """``value`` with every tensor inside it (dataclass fields, dict values) on ``device``."""
    if torch.is_tensor(value):
        return value.to(device)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _moved(getattr(value, f.name), device)
                                             for f in dataclasses.fields(value) if f.init})
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    return value
