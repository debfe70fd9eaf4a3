"""ITC and ITM over a whole accumulated batch, from tower outputs held as leaf tensors.

Gradient accumulation with the whole batch's negatives (``training.grad_cache``) first runs
every micro-batch's towers without a graph. What ITC and ITM read of those outputs (the
``interface``: pooled features for ITC, token features for ITM's fusion) becomes leaf
tensors here; ``WholeBatch`` computes ITC over every micro-batch's (and every process's)
embeddings and, micro-batch by micro-batch, ITM over its pairs with hard negatives mined
from the whole batch's similarities. Their backward leaves on each leaf the gradient the
re-run of its micro-batch carries into the towers.

The rows of the whole batch are this process's micro-batches in order, then (with several
processes) every process's in rank order (``retrieval.World``). Every process mines the
negatives of all rows and keeps its own, so that with the same RNG state the negatives are
those one process would draw for the concatenated batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from tuwen.data.batch import Batch
from tuwen.models.image_encoders import ImageFeatures
from tuwen.models.image_text_model import ImageTextModel
from tuwen.models.layers import pad_to
from tuwen.models.text_encoders import TextFeatures
from tuwen.tasks import itc, retrieval
from tuwen.tasks.gather import gather_cat, gather_sizes

# The interface tensors each whole-batch task differentiates (the others carry no gradient)
TASK_KEYS = {"itc": ("image_pooled", "text_pooled"),
             "itm": ("image_tokens", "first_tokens", "swapped_tokens")}


@dataclass
class TowerOutputs:
    """One micro-batch through the towers."""

    image: ImageFeatures
    text: TextFeatures | None     # the caption rows; None without captions
    swapped: TextFeatures | None  # ITM's swapped captions (``spatial_negatives``), if any


def encode_towers(model: ImageTextModel, batch: Batch, itm: bool) -> TowerOutputs:
    """The towers on ``batch`` in one fixed order (image, captions, ITM's swapped captions
    when ``itm`` trains): a re-run under the same RNG state draws the same dropout."""
    image = model.encode_image(batch.pixel_values)
    rows, part = batch.captions, batch.part("itm") if itm else None
    if rows is None:
        return TowerOutputs(image, None, None)
    text = model.encode_text(rows.input_ids, rows.attention_mask)
    swapped = None if part is None else model.encode_text(part.input_ids, part.attention_mask)
    return TowerOutputs(image, text, swapped)


def interface(out: TowerOutputs, batch: Batch, itm: bool) -> dict[str, torch.Tensor]:
    """What ITC (and, when ``itm`` trains, ITM) read of the towers' outputs; empty without
    captions."""
    rows = batch.captions
    if rows is None or out.text is None:
        return {}
    images = rows.image.unique()  # sorted, as the rows are
    tensors = {"image_pooled": out.image.pooled[images],        # (B_img, D)
               "text_pooled": out.text.pooled}                  # (R, D)
    if not itm:
        return tensors
    tensors.update({"image_tokens": out.image.tokens[images],   # (B_img, N, D)
                    "first_tokens": out.text.tokens[rows.first],  # (B_img, L, D)
                    "first_pooled": out.text.pooled[rows.first]})  # unused by the fusion
    if out.swapped is not None:
        tensors["swapped_tokens"] = out.swapped.tokens          # (S, L, D)
        tensors["swapped_pooled"] = out.swapped.pooled
    return tensors


def as_leaves(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().requires_grad_() for k, v in tensors.items()}


@dataclass
class Part:
    """One micro-batch with captions: its batch, its leaves, its first image row among this
    process's rows, and the gradients ITM left on its rows of the gathered fusion inputs."""

    batch: Batch
    leaves: dict[str, torch.Tensor]
    start: int
    matched: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.leaves["image_pooled"])


class WholeBatch:
    """ITC and ITM over this process's micro-batches (and every process's, with ``gather``),
    built from their leaves; ``parts`` holds the micro-batches that have captions."""

    def __init__(self, model: ImageTextModel, batches: list[Batch],
                 leaves: list[dict[str, torch.Tensor]], gather: bool) -> None:
        self.parts, start = [], 0
        for batch, leaf in zip(batches, leaves):
            if leaf:
                self.parts.append(Part(batch, leaf, start))
                start += len(leaf["image_pooled"])
        self.world = self._world(model, gather) if self.parts else None
        self._match: _MatchInputs | None = None

    @property
    def has_negatives(self) -> bool:
        """False as ``retrieval.caption_embeddings`` says None: no captions, or (one process)
        a single captioned image."""
        return self.world is not None and (self.world.gather or len(self.world.image_embeds) > 1)

    def _world(self, model: ImageTextModel, gather: bool) -> retrieval.World:
        images, owners, ids, base = [], [], [], 0
        for part in self.parts:
            rows = part.batch.captions
            images.append(rows.image.unique() + base)
            owners.append(rows.image + base)
            ids.append(rows.input_ids)
            base += part.batch.size
        width, pad = max(i.shape[1] for i in ids), model.spec.pad_token_id
        image_embeds = model.itc_head.embed_image(self._cat("image_pooled"))  # (B_img, E)
        text_embeds = model.itc_head.embed_text(self._cat("text_pooled"))     # (R, E)
        return retrieval.World(model, torch.cat(images), torch.cat(owners),
                               torch.cat([pad_to(i, width, 1, pad) for i in ids]),
                               image_embeds, text_embeds, gather)

    def _cat(self, key: str) -> torch.Tensor:
        return torch.cat([p.leaves[key] for p in self.parts])

    def itc_loss(self, model: ImageTextModel) -> torch.Tensor:
        """InfoNCE over the whole batch (``has_negatives`` must hold)."""
        weights = [p.batch.part("itc") for p in self.parts]
        weight = None if any(w is None for w in weights) else torch.cat([w.weight for w in weights])
        return itc.world_loss(model, self.world, weight)

    def mine(self) -> None:
        """ITM's hard negatives for every row of the whole batch (this draws from the RNG),
        and its fusion inputs of every process as leaves."""
        self._match = _MatchInputs.of(self)

    def itm_loss(self, model: ImageTextModel, part: Part) -> torch.Tensor:
        """ITM over ``part``'s pairs, as ``retrieval.matching`` on that micro-batch alone but
        with hard negatives from the whole batch (``mine`` first)."""
        return self._match.loss(model, self.world, part)

    def itm_gradients(self) -> None:
        """Hand each micro-batch the gradients the ITM losses left on its rows of the
        gathered fusion inputs (``cached_gradients`` reads them)."""
        self._match.scatter(self)

    def cached_gradients(self, part: Part, scale: float) -> dict[str, torch.Tensor]:
        """The gradient each of ``part``'s interface tensors gets from the whole-batch losses
        (divided by ``scale``, the loss scale fp16 backward multiplied them by)."""
        grads = {k: v.grad for k, v in part.leaves.items() if v.grad is not None}
        return {k: g / scale for k, g in {**grads, **part.matched}.items()}


@dataclass
class _MatchInputs:
    """ITM's fusion inputs of every process (leaves), and the mined negatives."""

    image_tokens: torch.Tensor     # (B_all, N, D) leaf
    text: TextFeatures             # (B_all, L, D) first captions; tokens a leaf
    negatives: retrieval.HardNegatives  # of every row

    @classmethod
    def of(cls, whole: WholeBatch) -> _MatchInputs:
        world, parts = whole.world, whole.parts
        first = torch.cat([p.batch.captions.first for p in parts])
        all_first = retrieval.first_caption_rows(world, first)
        rows = torch.arange(len(world.image_embeds), device=first.device)
        negatives = retrieval.mine_negatives(world, all_first, rows)
        width = max(p.leaves["first_tokens"].shape[1] for p in parts)
        if world.gather:
            width = max(gather_sizes(width))
        masks = [p.batch.captions.attention_mask[p.batch.captions.first] for p in parts]
        with torch.no_grad():
            local = TextFeatures(
                tokens=torch.cat([pad_to(p.leaves["first_tokens"], width, 1) for p in parts]),
                pooled=torch.cat([p.leaves["first_pooled"] for p in parts]),
                attention_mask=torch.cat([pad_to(m, width, 1) for m in masks]))
            sizes = world.image_sizes
            text = TextFeatures(*(_gathered(x, sizes, world.gather) for x in
                                  (local.tokens, local.pooled, local.attention_mask)))
            tokens = _gathered(torch.cat([p.leaves["image_tokens"] for p in parts]), sizes,
                               world.gather)
        text.tokens.requires_grad_()
        return cls(tokens.requires_grad_(), text, negatives)

    def loss(self, model: ImageTextModel, world: retrieval.World, part: Part) -> torch.Tensor:
        start = world.offset + part.start
        negatives = self.negatives.subset(slice(start, start + part.n))
        swaps, extra = part.batch.part("itm"), None
        if swaps is not None and "swapped_tokens" in part.leaves:
            images = part.batch.captions.image.unique()
            extra = (TextFeatures(part.leaves["swapped_tokens"], part.leaves["swapped_pooled"],
                                  swaps.attention_mask),
                     start + torch.searchsorted(images, swaps.image))
        return retrieval.pair_loss(model, self.image_tokens, self.text, negatives, extra)

    def scatter(self, whole: WholeBatch) -> None:
        """Every process's gradients on this process's rows, summed (the backward of a
        gather), split into each micro-batch's ``image_tokens`` and ``first_tokens``."""
        world = whole.world
        image, text = (x.grad if x.grad is not None else torch.zeros_like(x)
                       for x in (self.image_tokens, self.text.tokens))
        if world.gather:  # a collective: every process calls it once per step
            dist.all_reduce(image)
            dist.all_reduce(text)
        for part in whole.parts:
            rows = slice(world.offset + part.start, world.offset + part.start + part.n)
            width = part.leaves["first_tokens"].shape[1]
            part.matched = {"image_tokens": image[rows], "first_tokens": text[rows, :width]}


def _gathered(x: torch.Tensor, sizes: list[int], gather: bool) -> torch.Tensor:
    return gather_cat(x, sizes) if gather else x
