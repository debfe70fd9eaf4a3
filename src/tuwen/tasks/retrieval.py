"""Retrieval: image-text contrastive (ITC) and image-text matching (ITM) objectives.

ITM negatives are mined from the in-batch ITC similarities (ALBEF/BLIP): for each image a
caption the model finds confusingly similar, and for each caption such an image.
"""

from __future__ import annotations

import torch

from tuwen.models.image_encoders import ImageFeatures
from tuwen.models.image_text_model import ImageTextModel
from tuwen.models.losses import contrastive_loss, matching_loss, sample_hard_negatives
from tuwen.models.text_encoders import TextFeatures


def duplicate_text_mask(input_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) ids -> (B, B) True where two rows hold the same token sequence."""
    return (input_ids[:, None, :] == input_ids[None, :, :]).all(dim=-1)


def training_step(model: ImageTextModel, batch: dict, image: ImageFeatures, *,
                  itc: bool = True, itm: bool = True) -> dict[str, torch.Tensor]:
    has = batch["has_caption"]
    if has.sum() < 2:  # a contrastive batch of one has no negatives
        return {}
    ids, mask = batch["caption_input_ids"][has], batch["caption_attention_mask"][has]
    image_tokens, image_pooled = image.tokens[has], image.pooled[has]
    text = model.encode_text(ids, mask)
    image_embeds = model.itc_head.embed_image(image_pooled)
    text_embeds = model.itc_head.embed_text(text.pooled)
    positives = duplicate_text_mask(ids)
    losses = {}
    if itc:
        losses["itc"] = contrastive_loss(image_embeds, text_embeds, model.itc_head.scale(),
                                         positives)
    if itm:
        with torch.no_grad():
            similarity = image_embeds @ text_embeds.t()
        losses["itm"] = _matching(model, text, image_tokens, similarity, positives)
    return losses


def _matching(model: ImageTextModel, text: TextFeatures, image_tokens: torch.Tensor,
              similarity: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    n = similarity.shape[0]
    rows = torch.arange(n, device=similarity.device)
    neg_text = sample_hard_negatives(similarity, positives)        # a caption per image
    neg_image = sample_hard_negatives(similarity.t(), positives)   # an image per caption
    ok_t, ok_i = neg_text >= 0, neg_image >= 0
    text_idx = torch.cat([rows, neg_text[ok_t], rows[ok_i]])
    image_idx = torch.cat([rows, rows[ok_t], neg_image[ok_i]])
    labels = torch.cat([torch.ones(n), torch.zeros(int(ok_t.sum()) + int(ok_i.sum()))])
    pairs = TextFeatures(tokens=text.tokens[text_idx], pooled=text.pooled[text_idx],
                         attention_mask=text.attention_mask[text_idx])
    fused = model.fuse(pairs, image_tokens[image_idx])
    return matching_loss(model.itm_head(fused.pooled), labels.to(similarity.device))


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
