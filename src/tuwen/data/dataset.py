"""Joint image-text examples and batching.

One example is one image with everything known about it: its captions and its
questions. Each time it is drawn, one caption and one question are picked (seeded by
seed, epoch and index, so a resumed run draws the same ones), and one image pass feeds
every task.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tuwen.config.chat import ChatFormat
from tuwen.data.answers import AnswerVocab
from tuwen.data.augment import image_rng
from tuwen.data.images import load_image
from tuwen.data.records import ImageCaptions, VQAItem
from tuwen.data.text import TextNormalizer
from tuwen.data.vqa_text import (
    answer_sequences,
    continuation_ids,
    end_id,
    right_padded,
    teacher_forcing,
)
from tuwen.errors import DataError


@dataclass(frozen=True)
class JointExample:
    image_id: int | str
    image_path: Path
    captions: tuple[str, ...]
    questions: tuple[VQAItem, ...]


def join_by_image(captions: Sequence[ImageCaptions],
                  questions: Sequence[VQAItem]) -> list[JointExample]:
    """Group captions and questions by image file; images keep first-seen order."""
    by_path: dict[Path, dict] = {}
    for rec in captions:
        entry = by_path.setdefault(rec.image_path, {"id": rec.image_id, "caps": [], "qs": []})
        entry["caps"].extend(rec.captions)
    for item in questions:
        entry = by_path.setdefault(item.image_path, {"id": item.image_id, "caps": [], "qs": []})
        entry["qs"].append(item)
    return [JointExample(e["id"], path, tuple(e["caps"]), tuple(e["qs"]))
            for path, e in by_path.items()]


def example_repeats(examples: Sequence[JointExample],
                    weights: dict[Path, float]) -> list[float] | None:
    """Each example's repeat factor (its sources' ``weight``); None when all are 1."""
    repeats = [weights.get(ex.image_path, 1.0) for ex in examples]
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
        try:
            image = load_image(ex.image_path, self.transform.min_side)
            pixels = self.transform(image, image_rng(self.seed, self.epoch, index))
        except DataError as err:
            return {"bad": str(err)}
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return {"pixel_values": pixels,
                "captions": _draw(rng, ex.captions, self.captions_per_image),
                "questions": _draw(rng, ex.questions, self.questions_per_image)}


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


class Collator:
    """Drops failed images, tokenises captions and questions, builds VQA soft targets.

    Texts are flattened into rows; ``caption_image`` / ``question_image`` give each row's
    image (an index into ``pixel_values``) and ``caption_first`` marks the first caption
    drawn for each image, which the decoder and ITM use.

    ``tokenizer`` is the decoder's (decoder inputs, VQA prompts and answers);
    ``text_tokenizer`` the text encoder's (``caption_input_ids``, ``question_input_ids``,
    swapped captions) when it brings its own, else the decoder's serves both.
    """

    def __init__(self, tokenizer, vocab: AnswerVocab | None, max_length: int,
                 spatial_negatives: bool = False, vqa_answers: bool = False,
                 normalizer: TextNormalizer | None = None,
                 caption_counts: Mapping[str, int] | None = None,
                 text_tokenizer=None, chat: ChatFormat | None = None) -> None:
        self.tok, self.vocab, self.max_length = tokenizer, vocab, max_length
        self.chat = chat  # the LM's chat template (ModelSpec.chat); None: plain prompts
        self.text_tok = text_tokenizer or tokenizer
        self.normalize = normalizer or TextNormalizer()
        self.spatial_negatives = spatial_negatives
        self.vqa_answers = vqa_answers  # generative VQA: prompt + answer rows (data.vqa_text)
        # train.itc_specific_captions: retrieval text -> training images that have it
        self.caption_counts = caption_counts
        # question -> targets; keyed by the whole item since sources may share question ids
        self._soft_scores: dict[VQAItem, dict[int, float]] = {}

    def __call__(self, items: list[dict]) -> dict:
        good = [it for it in items if "bad" not in it]
        bad = [it["bad"] for it in items if "bad" in it]
        batch: dict = {"n_skipped": len(bad), "skipped": bad, "size": len(good)}
        if "position" in items[0]:  # streamed: where each item came from (StreamBatches)
            batch["positions"] = [it["position"] for it in items]
        if not good:
            return batch
        batch["pixel_values"] = torch.stack([it["pixel_values"] for it in good])
        caption_rows = [(i, j, c) for i, it in enumerate(good)
                        for j, c in enumerate(it["captions"])]
        question_rows = [(i, q) for i, it in enumerate(good) for q in it["questions"]]
        if caption_rows:
            batch.update(self.captions(caption_rows))
        if question_rows:
            batch.update(self.questions(question_rows))
        return batch

    def encode(self, texts: list[str]) -> dict:
        enc = self.text_tok(texts, padding="longest", truncation=True,
                            max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def captions(self, rows: list[tuple[int, int, str]]) -> dict:
        # the ITC/ITM text may also drop stop words; the decoder learns the whole caption
        texts = [self.normalize.retrieval(c) for _, _, c in rows]
        enc = self.encode(texts)
        dec_in, labels = self.decoder_inputs([self.normalize(c) for _, _, c in rows])
        out = {"caption_image": torch.tensor([i for i, _, _ in rows]),
               "caption_first": torch.tensor([j == 0 for _, j, _ in rows]),
               "caption_input_ids": enc["input_ids"],
               "caption_attention_mask": enc["attention_mask"],
               "decoder_input_ids": dec_in, "labels": labels}
        if self.caption_counts is not None:
            out["caption_weight"] = torch.tensor(
                [1.0 / self.caption_counts.get(t, 1) for t in texts])
        if self.spatial_negatives:
            out.update(self.swapped(rows, enc["input_ids"].shape[1]))
        return out

    def swapped(self, rows: list[tuple[int, int, str]], width: int) -> dict:
        """Spatially mirrored first captions (``spatial_negatives``), padded like the
        captions, with their image."""
        pairs = [(i, self.normalize.retrieval(s)) for i, j, c in rows if j == 0
                 if (s := swap_spatial(c)) is not None]
        if not pairs:
            return {}
        enc = self.text_tok([s for _, s in pairs], padding="max_length", truncation=True,
                            max_length=width, return_tensors="pt")
        return {"swap_image": torch.tensor([i for i, _ in pairs]),
                "swap_input_ids": enc["input_ids"], "swap_attention_mask": enc["attention_mask"]}

    def decoder_inputs(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """[BOS] w1 .. wn  ->  w1 .. wn [EOS]; padding labelled -100. With a chat template
        the prompt is its caption request and the caption the reply, closed by the end of
        turn: <prompt> w1 .. wn -> w1 .. wn <end>, the prompt labelled -100."""
        if self.chat is None:
            prompt = [self.tok.bos_token_id]
            ids = self.tok(texts, add_special_tokens=False)["input_ids"]
        else:
            prompt = list(self.chat.caption_prompt)
            request = self.chat.prompt(self.chat.caption_request)
            ids = continuation_ids(self.tok, [request] * len(texts), texts)
        end = end_id(self.tok, self.chat)
        rows = [teacher_forcing(prompt, seq[: self.max_length - 1], end) for seq in ids]
        return right_padded(rows, self.tok.pad_token_id)

    def soft_scores(self, q: VQAItem) -> dict[int, float]:
        """Answer normalisation is slow Python; each question's targets are computed once."""
        if q not in self._soft_scores:
            self._soft_scores[q] = self.vocab.soft_scores(q.answers)
        return self._soft_scores[q]

    def questions(self, rows: list[tuple[int, VQAItem]]) -> dict:
        questions = [self.normalize(q.question) for _, q in rows]
        enc = self.encode(questions)
        out = {"question_image": torch.tensor([i for i, _ in rows]),
               "question_input_ids": enc["input_ids"],
               "question_attention_mask": enc["attention_mask"]}
        if self.vocab is not None:
            targets = torch.zeros(len(rows), len(self.vocab))
            for r, (_, q) in enumerate(rows):
                for idx, score in self.soft_scores(q).items():
                    targets[r, idx] = score
            out["vqa_targets"] = targets
        if self.vqa_answers:
            out["answer_input_ids"], out["answer_labels"] = answer_sequences(
                self.tok, questions,
                [q.multiple_choice_answer for _, q in rows], self.max_length, self.chat)
        return out
