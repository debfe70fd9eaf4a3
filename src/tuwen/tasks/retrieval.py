"""What the retrieval tasks share: image-text contrastive (ITC, ``tasks.itc``) and
image-text matching (ITM, ``tasks.itm``).

Within a step both read ``caption_embeddings`` (computed once); ITM's negatives are mined from
the in-batch ITC similarities (ALBEF/BLIP): for each image a caption the model finds
confusingly similar, and for each caption such an image.

For prediction, ``retrieval_features`` embeds many images and texts in batches, and
``itm_rerank`` re-scores each query's ITC top-k with ITM (BLIP's protocol).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tuwen.data.text import TextNormalizer
from tuwen.models.image_encoders import ImageFeatures
from tuwen.models.image_text_model import ImageTextModel
from tuwen.models.layers import pad_to
from tuwen.models.losses import matching_loss, sample_hard_negatives
from tuwen.models.text_encoders import TextFeatures
from tuwen.tasks.base import StepInputs
from tuwen.tasks.batching import chunk_starts, model_device
from tuwen.tasks.gather import gather_cat, gather_sizes, rank, world_size


def duplicate_text_mask(input_ids: torch.Tensor, others: torch.Tensor | None = None,
                        ) -> torch.Tensor:
    """(B, L) ids -> (B, B) True where two rows hold the same token sequence; with
    ``others`` (S, L), (B, S) against those rows instead."""
    others = input_ids if others is None else others
    return (input_ids[:, None, :] == others[None, :, :]).all(dim=-1)


def caption_positives(images: torch.Tensor, owner: torch.Tensor, input_ids: torch.Tensor,
                      others: torch.Tensor | None = None) -> torch.Tensor:
    """(B_img, R) True where caption row r describes image b: it is one of b's captions,
    or the same text as one of them (duplicate captions are not negatives). With
    ``others`` (S, L), (B_img, S): which of those texts are the same as one of b's captions."""
    own = (owner[None, :] == images[:, None]).float()  # (B_img, R)
    return (own @ duplicate_text_mask(input_ids, others).float()) > 0


@dataclass
class CaptionEmbeddings:
    """What ITC and ITM share within a step: the captions through the text encoder and
    every process's ITC embeddings (``World``)."""

    images: torch.Tensor   # (B_img,) the batch images that have captions, sorted
    text: TextFeatures     # (R, L, D) the caption rows
    world: World


def caption_embeddings(step: StepInputs) -> CaptionEmbeddings | None:
    """The step's caption embeddings; None when the batch has no captions, or (one process)
    a single captioned image, which leaves a contrastive batch without negatives. With
    ``step.gather`` (a multi-process run) ITC's negatives are the global batch and ITM's hard
    negatives are mined from the global similarity matrix."""
    rows, model = step.batch.captions, step.model
    if rows is None:
        return None
    images = rows.image.unique()  # sorted, as the rows are; first[r] rows align with it
    if len(images) < 2 and not step.gather:
        return None
    text = model.encode_text(rows.input_ids, rows.attention_mask)
    image_embeds = model.itc_head.embed_image(step.image.pooled[images])  # (B_img, E)
    text_embeds = model.itc_head.embed_text(text.pooled)                  # (R, E)
    world = World(model, images, rows.image, rows.input_ids, image_embeds, text_embeds,
                  step.gather)
    return CaptionEmbeddings(images, text, world)


class World:
    """The ITC inputs of every process, concatenated in rank order (one process: its own).

    ``offset`` is where this process's images start among all images; its caption rows are
    ``text_offset`` onwards among all caption rows."""

    def __init__(self, model: ImageTextModel, images: torch.Tensor, owner: torch.Tensor,
                 ids: torch.Tensor, image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                 gather: bool) -> None:
        gather = gather and world_size() > 1
        self.gather = gather
        self.image_sizes = gather_sizes(len(images)) if gather else [len(images)]
        self.text_sizes = gather_sizes(len(ids)) if gather else [len(ids)]
        self.offset = sum(self.image_sizes[:rank()]) if gather else 0
        self.text_offset = sum(self.text_sizes[:rank()]) if gather else 0
        owner_row = torch.searchsorted(images, owner) + self.offset  # row among all images
        self.image_embeds = self.cat(image_embeds, self.image_sizes)       # (B_all, E)
        self.text_embeds = self.cat(text_embeds, self.text_sizes)          # (R_all, E)
        self.pad_id = model.spec.pad_token_id
        self.all_rows = self.cat(owner_row, self.text_sizes)
        self.all_ids = self.cat(ids, self.text_sizes, width_dim=1, pad_value=self.pad_id)
        self.positives = caption_positives(torch.arange(len(self.image_embeds),
                                                        device=ids.device), self.all_rows,
                                           self.all_ids)

    def cat(self, x: torch.Tensor, sizes: list[int], **kwargs) -> torch.Tensor:
        return gather_cat(x, sizes, **kwargs) if self.gather else x


def _concat_text(parts: list[TextFeatures]) -> TextFeatures:
    """Text features of several batches in one, padded to the longest."""
    width = max(p.tokens.shape[1] for p in parts)
    return TextFeatures(tokens=torch.cat([pad_to(p.tokens, width, 1) for p in parts]),
                        pooled=torch.cat([p.pooled for p in parts]),
                        attention_mask=torch.cat([pad_to(p.attention_mask, width, 1)
                                                  for p in parts]))


def _gather_text(world: World, text: TextFeatures) -> TextFeatures:
    if not world.gather:
        return text
    sizes = world.image_sizes  # one first caption per image
    width = max(gather_sizes(text.tokens.shape[1]))
    return TextFeatures(tokens=gather_cat(pad_to(text.tokens, width, 1), sizes),
                        pooled=gather_cat(text.pooled, sizes),
                        attention_mask=gather_cat(pad_to(text.attention_mask, width, 1), sizes))


@dataclass
class HardNegatives:
    """ITM's mined negatives for some image rows among every process's images (``World``)."""

    rows: torch.Tensor   # (n,) the image rows, among all images
    text: torch.Tensor   # (n,) per row a negative first caption (its image's row); -1: none
    image: torch.Tensor  # (n,) per row's first caption a negative image row; -1: none

    def subset(self, part: slice) -> HardNegatives:
        return HardNegatives(self.rows[part], self.text[part], self.image[part])


def first_caption_rows(world: World, first: torch.Tensor) -> torch.Tensor:
    """(R_all,) True at every process's first caption rows (one per image, in image order);
    ``first`` is this process's (R,) flag."""
    first_rows = world.text_offset + torch.nonzero(first).squeeze(1)
    all_first = torch.zeros(len(world.text_embeds), dtype=torch.bool, device=first.device)
    all_first[world.cat(first_rows, world.image_sizes)] = True
    return all_first


@torch.no_grad()
def mine_negatives(world: World, all_first: torch.Tensor, rows: torch.Tensor) -> HardNegatives:
    """For each image row of ``rows`` a caption the model finds confusingly similar, and for
    its first caption such an image (ALBEF/BLIP), drawn from every process's; never a
    positive."""
    first_embeds = world.text_embeds[all_first]                    # (B_all, E)
    i2t = world.image_embeds[rows] @ first_embeds.t()              # (n, B_all)
    t2i = first_embeds[rows] @ world.image_embeds.t()              # (n, B_all)
    positives = world.positives[:, all_first]                      # (B_all, B_all)
    return HardNegatives(rows, sample_hard_negatives(i2t, positives[rows]),
                         sample_hard_negatives(t2i, positives.t()[rows]))


def matching(model: ImageTextModel, world: World, image_tokens: torch.Tensor,
             text: TextFeatures, first: torch.Tensor,
             extra: tuple[TextFeatures, torch.Tensor] | None = None) -> torch.Tensor:
    """ITM over this process's positive pairs, one mined negative caption per image and one
    mined negative image per caption (both drawn from every process's), plus ``extra``
    negative (text, local image row) pairs if given."""
    n = len(image_tokens)
    all_first = first_caption_rows(world, first)
    negatives = mine_negatives(world, all_first,
                               world.offset + torch.arange(n, device=first.device))
    all_text = _gather_text(world, _rows(text, first))
    image_tokens = world.cat(image_tokens, world.image_sizes)  # (B_all, N, D)
    if extra is not None:
        extra = (extra[0], world.offset + extra[1])
    return pair_loss(model, image_tokens, all_text, negatives, extra)


def pair_loss(model: ImageTextModel, image_tokens: torch.Tensor, text: TextFeatures,
              negatives: HardNegatives,
              extra: tuple[TextFeatures, torch.Tensor] | None = None) -> torch.Tensor:
    """ITM's cross-entropy over the positive pair of each of ``negatives.rows``, its mined
    negatives and ``extra`` (text, image row) negatives; ``image_tokens`` (B_all, N, D) and
    ``text`` (B_all first captions) are every process's, rows as in ``World``."""
    rows, n = negatives.rows, len(negatives.rows)
    ok_t, ok_i = negatives.text >= 0, negatives.image >= 0
    text_idx = torch.cat([rows, negatives.text[ok_t], rows[ok_i]])
    image_idx = torch.cat([rows, rows[ok_t], negatives.image[ok_i]])
    if extra is not None:
        extra_text, extra_rows = extra
        text_idx = torch.cat([text_idx, len(text.pooled) + torch.arange(
            len(extra_rows), device=text_idx.device)])
        image_idx = torch.cat([image_idx, extra_rows])
        text = _concat_text([text, extra_text])
    labels = torch.zeros(len(text_idx))
    labels[:n] = 1
    fused = model.fuse(_rows(text, text_idx), image_tokens[image_idx])
    return matching_loss(model.itm_head(fused.pooled), labels.to(image_tokens.device))


def _rows(text: TextFeatures, index: torch.Tensor) -> TextFeatures:
    return TextFeatures(tokens=text.tokens[index], pooled=text.pooled[index],
                        attention_mask=text.attention_mask[index])


@torch.no_grad()
def embed_images(model: ImageTextModel, pixel_values: torch.Tensor) -> ImageFeatures:
    return model.encode_image(pixel_values)


@torch.no_grad()
def embed_texts(model: ImageTextModel, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, TextFeatures]:
    text = model.encode_text(input_ids, attention_mask)
    return model.itc_head.embed_text(text.pooled), text


@torch.no_grad()
def match_scores(model: ImageTextModel, text: TextFeatures,
                 image_tokens: torch.Tensor) -> torch.Tensor:
    """ITM probability that each (text, image) row pair matches."""
    fused = model.fuse(text, image_tokens)
    return model.itm_head(fused.pooled).float().softmax(dim=-1)[:, 1]


def tokenize_texts(model: ImageTextModel, tokenizer, texts: Sequence[str],
                   max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of ``texts`` normalised as the model was trained, one
    padding for all."""
    normalize = TextNormalizer.from_config(model.spec.text)
    enc = tokenizer([normalize.retrieval(t) for t in texts], padding="longest",
                    truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@dataclass
class RetrievalFeatures:
    image_embeds: torch.Tensor   # (N_img, E) unit-norm ITC space
    image_tokens: torch.Tensor   # (N_img, N_patch, D) for ITM re-ranking
    text_embeds: torch.Tensor    # (N_txt, E)
    text: TextFeatures           # (N_txt, L, D), one padding for all texts

    def similarity(self) -> np.ndarray:
        """(N_img, N_txt) ITC cosine similarity."""
        return (self.image_embeds @ self.text_embeds.t()).numpy()


@torch.no_grad()
def retrieval_features(model: ImageTextModel, pixel_values: torch.Tensor,
                       input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                       batch_size: int = 64, show_progress: bool = False) -> RetrievalFeatures:
    """ITC embeddings and ITM inputs of every image (N_img, 3, H, W) and every text
    (N_txt, L), ``batch_size`` at a time on the model's device; the features come back on
    the CPU."""
    device = model_device(model)
    image_embeds, image_tokens, text_embeds, text_tokens, text_pooled = [], [], [], [], []
    for start in chunk_starts(len(pixel_values), batch_size, "embed images", show_progress):
        feats = embed_images(model, pixel_values[start: start + batch_size].to(device))
        image_embeds.append(model.itc_head.embed_image(feats.pooled).float().cpu())
        image_tokens.append(feats.tokens.cpu())
    for start in chunk_starts(len(input_ids), batch_size, "embed texts", show_progress):
        chunk = slice(start, start + batch_size)
        emb, feats = embed_texts(model, input_ids[chunk].to(device),
                                 attention_mask[chunk].to(device))
        text_embeds.append(emb.float().cpu())
        text_tokens.append(feats.tokens.cpu())
        text_pooled.append(feats.pooled.cpu())
    text = TextFeatures(torch.cat(text_tokens), torch.cat(text_pooled), attention_mask)
    return RetrievalFeatures(torch.cat(image_embeds), torch.cat(image_tokens),
                             torch.cat(text_embeds), text)


def _candidates(sim: np.ndarray, k: int, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """(image rows, text columns) of each query's ITC top-k, one pair per candidate."""
    if direction == "i2t":
        cand = np.argsort(-sim, axis=1, kind="stable")[:, :k]           # (N_img, k) texts
        return np.repeat(np.arange(sim.shape[0]), cand.shape[1]), cand.ravel()
    cand = np.argsort(-sim, axis=0, kind="stable")[:k, :]               # (k, N_txt) images
    return cand.T.ravel(), np.repeat(np.arange(sim.shape[1]), cand.shape[0])


@torch.no_grad()
def itm_rerank(model: ImageTextModel, feats: RetrievalFeatures, sim: np.ndarray, k: int,
               direction: str, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
    """BLIP's protocol: the ITC top-k of each query (``direction`` "i2t": each image's texts,
    "t2i": each text's images) are re-scored by ITM probability + ITC similarity; everything
    outside the top-k ranks below them. Returns scores shaped like ``sim`` (N_img, N_txt)."""
    device = model_device(model)
    scores = np.full_like(sim, -100.0)
    img_idx, txt_idx = _candidates(sim, k, direction)
    probs = []
    for start in chunk_starts(len(img_idx), batch_size, f"itm rerank {direction}",
                              show_progress):
        i = torch.from_numpy(img_idx[start: start + batch_size])
        t = torch.from_numpy(txt_idx[start: start + batch_size])
        text = TextFeatures(feats.text.tokens[t].to(device), feats.text.pooled[t].to(device),
                            feats.text.attention_mask[t].to(device))
        probs.append(match_scores(model, text, feats.image_tokens[i].to(device)).float().cpu())
    scores[img_idx, txt_idx] = torch.cat(probs).numpy() + sim[img_idx, txt_idx]
    return scores
