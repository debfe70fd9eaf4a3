"""What an evaluation runs on: the split's captioned images (at most ``eval.max_images``),
their questions, its conversations (at most ``eval.max_images``), and every image decoded
once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tuwen.config import EvalConfig
from tuwen.data.images import ImageTransform, load_image
from tuwen.data.prepare import SplitData
from tuwen.data.records import Conversation, ImageCaptions, ImageClass, VQAItem
from tuwen.errors import DataError


def absolute(path: str | Path) -> str:
    """Image paths in predictions.jsonl are absolute: the report may be drawn elsewhere."""
    return str(Path(path).absolute())


@dataclass
class LoadedImages:
    paths: list[Path]
    ids: list[int | str]
    pixels: torch.Tensor            # (N, 3, H, W)
    row: dict[Path, int]            # image path -> row in pixels
    skipped: list[str]

    def rows(self, paths: Sequence[Path]) -> list[int]:
        return [self.row[p] for p in paths]


def load_images(paths: Sequence[Path], ids: Sequence, transform: ImageTransform,
                show_progress: bool = True) -> LoadedImages:
    """Each image decoded and transformed once; one that fails to load is skipped, with why."""
    kept_paths, kept_ids, tensors, skipped = [], [], [], []
    for path, image_id in tqdm(list(zip(paths, ids)), desc="load images",
                               disable=not show_progress, leave=False):
        try:
            tensors.append(transform(load_image(path, transform.min_side)))
        except DataError as err:
            skipped.append(str(err))
            continue
        kept_paths.append(path)
        kept_ids.append(image_id)
    pixels = torch.stack(tensors) if tensors else torch.empty(0)
    return LoadedImages(kept_paths, kept_ids, pixels, {p: i for i, p in enumerate(kept_paths)},
                        skipped)


@dataclass
class EvalSet:
    split: str
    captions: list[ImageCaptions]   # the captioned images that loaded
    questions: list[VQAItem]        # their questions (and those of VQA-only images)
    images: LoadedImages            # every image of all three, once
    skipped: list[str]              # why samples were left out: the reader's and the loader's
    classes: list[ImageClass] = field(default_factory=list)  # class-labelled images
    conversations: list[Conversation] = field(default_factory=list)  # whose images loaded

    def captioned_pixels(self) -> torch.Tensor:
        """(N_captioned, 3, H, W): the image of each caption record, in their order."""
        return self.images.pixels[self.images.rows([r.image_path for r in self.captions])]

    def classified_pixels(self) -> torch.Tensor:
        """(N_classes, 3, H, W): the image of each class record, in their order."""
        return self.images.pixels[self.images.rows([r.image_path for r in self.classes])]

    def conversation_rows(self) -> list[int]:
        """The row in ``images.pixels`` of each conversation's image; -1: text-only."""
        return [-1 if c.image_path is None else self.images.row[c.image_path]
                for c in self.conversations]

    def question_rows(self, questions: Sequence[VQAItem] | None = None) -> list[int]:
        """The row in ``images.pixels`` of each question's image."""
        questions = self.questions if questions is None else questions
        return self.images.rows([q.image_path for q in questions])


def select_eval_set(data: SplitData, cfg: EvalConfig, transform: ImageTransform,
                    show_progress: bool = True) -> EvalSet:
    """The captioned images (at most ``cfg.max_images``), their questions, and every image
    decoded once by ``transform`` (the model's); images that fail to load are dropped with
    their texts (and counted)."""
    captions = data.captions[: cfg.max_images] if cfg.max_images else data.captions
    paths = [r.image_path for r in captions]
    ids = [r.image_id for r in captions]
    allowed = set(paths) if cfg.max_images else None
    questions = [q for q in data.questions if allowed is None or q.image_path in allowed]
    classes = data.classes[: cfg.max_images] if cfg.max_images else data.classes
    known = set(paths)
    conversations = data.conversations[: cfg.max_images] if cfg.max_images else \
        data.conversations
    with_image = [c for c in conversations if c.image_path is not None]
    for r in [*questions, *classes, *with_image]:  # their images are loaded too
        if r.image_path not in known:
            known.add(r.image_path)
            paths.append(r.image_path)
            ids.append(r.image_id)
    images = load_images(paths, ids, transform, show_progress)
    return EvalSet(data.split, [r for r in captions if r.image_path in images.row],
                   [q for q in questions if q.image_path in images.row], images,
                   list(data.skipped) + images.skipped,
                   [r for r in classes if r.image_path in images.row],
                   [c for c in conversations if c.image_path is None
                    or c.image_path in images.row])
