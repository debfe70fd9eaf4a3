"""Joint image-text examples and batching.

One example is one image with everything known about it: its captions, its questions and
its conversations (LLaVA-format data). Each time it is drawn, one caption, one question and
one conversation are picked (seeded by seed, epoch and index, so a resumed run draws the
same ones), and one image pass feeds every task. A text-only conversation is an example
without an image.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tuwen.config.chat import ChatFormat
from tuwen.data.answers import AnswerVocab
from tuwen.data.augment import image_rng
from tuwen.data.batch import Batch, CaptionRows, ConversationRows, QuestionRows
from tuwen.data.images import load_image
from tuwen.data.records import Conversation, ImageCaptions, VQAItem, sample_key
from tuwen.data.text import TextNormalizer
from tuwen.errors import DataError


@dataclass(frozen=True)
class JointExample:
    image_id: int | str | None
    image_path: Path | None  # None: a text-only conversation
    captions: tuple[str, ...]
    questions: tuple[VQAItem, ...]
    conversations: tuple[Conversation, ...] = ()

    @property
    def key(self) -> Path | Conversation:
        """What the sources' weights are keyed by (``records.sample_key``)."""
        return self.image_path if self.image_path is not None else self.conversations[0]


def join_by_image(captions: Sequence[ImageCaptions], questions: Sequence[VQAItem],
                  conversations: Sequence[Conversation] = ()) -> list[JointExample]:
    """Group captions, questions and conversations by image file; images keep first-seen
    order. Each text-only conversation is an example of its own."""
    by_key: dict[Path | Conversation, dict] = {}
    for kind, records in (("caps", captions), ("qs", questions), ("convs", conversations)):
        for rec in records:
            entry = by_key.setdefault(sample_key(rec), {"id": rec.image_id, "caps": [],
                                                        "qs": [], "convs": []})
            entry[kind].extend(rec.captions if kind == "caps" else [rec])
    return [JointExample(e["id"], key if isinstance(key, Path) else None, tuple(e["caps"]),
                         tuple(e["qs"]), tuple(e["convs"]))
            for key, e in by_key.items()]


def example_repeats(examples: Sequence[JointExample],
                    weights: dict[Path | Conversation, float]) -> list[float] | None:
    """Each example's repeat factor (its sources' ``weight``); None when all are 1."""
    repeats = [weights.get(ex.key, 1.0) for ex in examples]
    return None if all(r == 1.0 for r in repeats) else repeats


class JointDataset(Dataset):
    """Yields the image tensor with up to ``captions_per_image`` captions and
    ``questions_per_image`` questions drawn without replacement.

    Several texts per image make each (costly) image pass feed more supervision: the
    text side is cheap next to the image encoder. An image that fails to load yields
    ``{"bad": reason}``; the collator drops and counts it.
    """

    def __init__(self, examples: Sequence[JointExample],
                 transform: Callable[[object], torch.Tensor], seed: int = 0,
                 captions_per_image: int = 1, questions_per_image: int = 1) -> None:
        self.examples, self.transform, self.seed = list(examples), transform, seed
        self.captions_per_image, self.questions_per_image = captions_per_image, questions_per_image
        # In shared memory: persistent loader workers hold a copy of the dataset, and would
        # otherwise keep epoch 0 (the same draws and crops every epoch).
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __getitem__(self, index: int) -> dict:
        # index >= len: a repeat of examples[index % len] (EpochBatchSampler repeats), with
        # its own caption draw
        ex = self.examples[index % len(self.examples)]
        pixels = None
        if ex.image_path is not None:
            try:
                image = load_image(ex.image_path, self.transform.min_side)
                pixels = self.transform(image, image_rng(self.seed, self.epoch, index))
            except DataError as err:
                return {"bad": str(err)}
        return drawn_item(ex, pixels, np.random.default_rng([self.seed, self.epoch, index]),
                          self.captions_per_image, self.questions_per_image)


def drawn_item(ex: JointExample, pixels: torch.Tensor | None, rng: np.random.Generator,
               captions_per_image: int, questions_per_image: int) -> dict:
    """A training item: the pixels (None: text-only) and the texts drawn for this time."""
    item = {"pixel_values": pixels, "captions": _draw(rng, ex.captions, captions_per_image),
            "questions": _draw(rng, ex.questions, questions_per_image)}
    if ex.conversations:  # drawn last: data without conversations draws as it always did
        item["conversations"] = _draw(rng, ex.conversations, 1)
    return item


def _draw(rng: np.random.Generator, items: Sequence, k: int) -> list:
    if not items:
        return []
    return [items[i] for i in rng.permutation(len(items))[:k]]


class EpochBatchSampler(Sampler[list[int]]):
    """A seeded permutation per epoch, cut into batches; can start mid-epoch.

    Owning the order (rather than a global RNG) is what makes resume exact: the position
    is just (epoch, batches already consumed). ``repeats`` (one per example, the sources'
    ``weight``) draws example i floor(r) times per epoch, plus once more with probability
    r - floor(r); its k-th copy has index ``i + k * size``.
    """

    def __init__(self, size: int, batch_size: int, seed: int, drop_last: bool = True,
                 repeats: Sequence[float] | None = None) -> None:
        self.size, self.batch_size, self.seed, self.drop_last = size, batch_size, seed, drop_last
        self.repeats = None if repeats is None else torch.tensor(repeats, dtype=torch.float64)
        self.epoch, self.start_batch = 0, 0
        self._order: tuple[int, list[int]] | None = None  # (epoch, its order), cached

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def order(self) -> list[int]:
        """This epoch's example indexes, in the order they are drawn."""
        if self._order is None or self._order[0] != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            if self.repeats is None:
                order = torch.randperm(self.size, generator=g).tolist()
            else:
                order = self._repeated(g)
            self._order = (self.epoch, order)
        return self._order[1]

    def _repeated(self, g: torch.Generator) -> list[int]:
        whole = self.repeats.floor()
        counts = (whole + (torch.rand(self.size, generator=g, dtype=torch.float64)
                           < self.repeats - whole)).long().tolist()
        copies = [i + k * self.size for i, n in enumerate(counts) for k in range(n)]
        return [copies[j] for j in torch.randperm(len(copies), generator=g).tolist()]

    def __len__(self) -> int:
        full, rest = divmod(len(self.order()), self.batch_size)
        return full if self.drop_last or not rest else full + 1

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        for b in range(self.start_batch, len(self)):
            yield order[b * self.batch_size: (b + 1) * self.batch_size]


class MapBatches:
    """Endless training batches from a map-style dataset, epoch after epoch.

    The data position is (epoch, batches of it consumed): ``state_dict()`` after any batch
    and ``load_state_dict()`` before iterating continue exactly where a run stopped.
    """

    def __init__(self, loader: DataLoader, sampler: EpochBatchSampler) -> None:
        self.loader, self.sampler = loader, sampler
        self.epoch, self.batch_in_epoch = 0, 0

    def __iter__(self) -> Iterator[dict]:
        while True:
            self.sampler.set_position(self.epoch, self.batch_in_epoch)
            self.loader.dataset.set_epoch(self.epoch)
            for batch in self.loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])


SPATIAL_SWAPS = {"left": "right", "right": "left", "above": "below", "below": "above",
                 "top": "bottom", "bottom": "top"}
_SPATIAL = re.compile(r"\b(" + "|".join(SPATIAL_SWAPS) + r")\b")


def swap_spatial(text: str) -> str | None:
    """"a red circle left of a blue square" -> "... right of ..."; None if nothing to swap.

    A caption with its spatial words mirrored is (almost always) false for the image: a
    hard negative that only a model which encodes spatial relations can reject (NegCLIP's
    swap negatives, restricted to spatial words).
    """
    swapped = _SPATIAL.sub(lambda m: SPATIAL_SWAPS[m.group(1)], text)
    return swapped if swapped != text else None


def caption_image_counts(records: Sequence, normalize: TextNormalizer) -> Counter:
    """Retrieval text (as the ITC sees it) -> how many of ``records``' images have it as a
    caption: "a red circle" describes many shapes images, "a small red circle above a large
    blue square" few."""
    return Counter(text for r in records
                   for text in {normalize.retrieval(c) for c in r.captions})


@dataclass
class TextTools:
    """What a task's collate function reads texts with."""

    tokenizer: Any                 # the decoder's: decoder inputs, VQA prompts and answers
    text_tokenizer: Any            # the text encoder's (the decoder's when it has none)
    normalize: TextNormalizer
    max_length: int
    chat: ChatFormat | None = None  # the LM's chat template (ModelSpec.chat); None: plain
    vocab: AnswerVocab | None = None

    def encode(self, texts: list[str], **options) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) of ``texts`` in the text encoder's tokens."""
        enc = self.text_tokenizer(texts, **{"padding": "longest", "truncation": True,
                                            "max_length": self.max_length,
                                            "return_tensors": "pt", **options})
        return enc["input_ids"], enc["attention_mask"]


# A task's collate: the batch (images and label rows filled) -> its part, or None
PartCollate = Callable[[Batch], object]


class Collator:
    """Drops failed images, tokenises captions and questions for the text encoder, lists the
    conversations, then lets each task's collate function fill its part of the ``Batch``.

    Texts are flattened into rows (``CaptionRows``, ``QuestionRows``): each row knows its
    image, and ``CaptionRows.first`` marks the first caption drawn for each image.
    """

    def __init__(self, tools: TextTools, parts: Mapping[str, PartCollate]) -> None:
        self.tools, self.parts = tools, dict(parts)

    def __call__(self, items: list[dict]) -> Batch:
        good = [it for it in items if "bad" not in it]
        batch = Batch(None, len(good), [it["bad"] for it in items if "bad" in it])
        if "position" in items[0]:  # streamed: where each item came from (StreamBatches)
            batch.positions = [it["position"] for it in items]
        if not good:
            return batch
        pixels = [it["pixel_values"] for it in good if it["pixel_values"] is not None]
        if pixels:
            batch.pixel_values = torch.stack(pixels)
        rows = (torch.tensor([it["pixel_values"] is not None for it in good]).cumsum(0) - 1
                ).tolist()  # each item's row in pixel_values (text-only items have none)
        caption_rows = [(rows[i], j, c) for i, it in enumerate(good)
                        for j, c in enumerate(it["captions"])]
        question_rows = [(rows[i], q) for i, it in enumerate(good) for q in it["questions"]]
        conversations = [(rows[i] if it["pixel_values"] is not None else -1, c)
                         for i, it in enumerate(good) for c in it.get("conversations", ())]
        if caption_rows:
            batch.captions = self.captions(caption_rows)
        if question_rows:
            batch.questions = self.questions(question_rows)
        if conversations:
            batch.conversations = ConversationRows(torch.tensor([i for i, _ in conversations]),
                                                   [c for _, c in conversations])
        for name, collate in self.parts.items():
            if (part := collate(batch)) is not None:
                batch.parts[name] = part
        return batch

    def captions(self, rows: list[tuple[int, int, str]]) -> CaptionRows:
        # the ITC/ITM text may also drop stop words; the decoder learns the whole caption
        retrieval = [self.tools.normalize.retrieval(c) for _, _, c in rows]
        ids, mask = self.tools.encode(retrieval)
        return CaptionRows(torch.tensor([i for i, _, _ in rows]),
                           torch.tensor([j == 0 for _, j, _ in rows]), ids, mask,
                           [c for _, _, c in rows], retrieval)

    def questions(self, rows: list[tuple[int, VQAItem]]) -> QuestionRows:
        ids, mask = self.tools.encode([self.tools.normalize(q.question) for _, q in rows])
        return QuestionRows(torch.tensor([i for i, _ in rows]), ids, mask, [q for _, q in rows])
