"""Image-text matching (ITM): a binary classifier over the fused pair, trained on each image's
first caption against hard negatives mined from the ITC similarities (ALBEF/BLIP), and with
``spatial_negatives`` against the caption with its position words mirrored. It has no
evaluator of its own: ``eval.itm_rerank_k`` re-ranks ITC's retrieval with it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from pydantic import Field

from tuwen.config import Section
from tuwen.data.batch import Batch
from tuwen.data.dataset import TextTools, swap_spatial
from tuwen.models.heads import head_spec
from tuwen.models.spec import ModelSpec
from tuwen.tasks import retrieval
from tuwen.tasks.base import StepInputs, Task


@dataclass
class SwappedCaptions:
    """ITM's part of a batch with ``spatial_negatives``: first captions with their position
    words mirrored (data.dataset.swap_spatial), padded like the captions."""

    image: torch.Tensor           # (S,) the image each swapped caption is a negative for
    input_ids: torch.Tensor       # (S, L)
    attention_mask: torch.Tensor  # (S, L)


class ItmOptions(Section):
    """Options of ITM (train.task_options.itm)."""

    spatial_negatives: bool = Field(False, description=(
        "ITM also rejects each image's first caption with English position words swapped "
        "(left/right, above/below). Tuned on the shapes data; `configs/shapes.yaml` turns "
        "it on."))


def swapped_captions(tools: TextTools, batch: Batch) -> SwappedCaptions | None:
    rows = batch.captions
    if rows is None:
        return None
    pairs = [(int(i), tools.normalize.retrieval(s))
             for i, first, c in zip(rows.image, rows.first, rows.texts)
             if first and (s := swap_spatial(c)) is not None]
    if not pairs:
        return None
    ids, mask = tools.encode([s for _, s in pairs], padding="max_length",
                             max_length=rows.input_ids.shape[1])
    return SwappedCaptions(torch.tensor([i for i, _ in pairs]), ids, mask)


class ItmTask(Task):
    name = "itm"
    labels = "caption"
    description = "image-text matching with hard negatives"
    Options = ItmOptions
    whole_batch = True  # its negatives are the batch's other samples

    def heads(self, spec: ModelSpec) -> dict[str, dict]:
        return {"itm_head": head_spec("matching", dim=spec.model.hidden_size)}

    def collate(self, tools, options: ItmOptions, spec, train):
        if not options.spatial_negatives or train is None:
            return None
        return partial(swapped_captions, tools)

    def loss(self, step: StepInputs, options: ItmOptions) -> torch.Tensor | None:
        """On each image's first caption only: three fusion passes per pair are costly."""
        shared = step.shared(retrieval.caption_embeddings)
        if shared is None:
            return None
        model, swaps = step.model, step.batch.part(self.name)
        extra = None
        if swaps is not None:
            extra = (model.encode_text(swaps.input_ids, swaps.attention_mask),
                     torch.searchsorted(shared.images, swaps.image))
        return retrieval.matching(model, shared.world, step.image.tokens[shared.images],
                                  shared.text, step.batch.captions.first, extra)
