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


def caption_positives(images: torch.Tensor, owner: torch.Tensor,
                      input_ids: torch.Tensor) -> torch.Tensor:
    """(B_img, R) True where caption row r describes image b: it is one of b's captions,
    or the same text as one of them (duplicate captions are not negatives)."""
    own = (owner[None, :] == images[:, None]).float()  # (B_img, R)
    return (own @ duplicate_text_mask(input_ids).float()) > 0


def training_step(model: ImageTextModel, batch: dict, image: ImageFeatures, *,
                  itc: bool = True, itm: bool = True) -> dict[str, torch.Tensor]:
    if "caption_image" not in batch:
        return {}
    owner, first = batch["caption_image"], batch["caption_first"]
    images = owner.unique()  # sorted, as the rows are; first[r] rows align with it
    if len(images) < 2:  # a contrastive batch of one image has no negatives
        return {}
    ids, mask = batch["caption_input_ids"], batch["caption_attention_mask"]
    text = model.encode_text(ids, mask)
    image_embeds = model.itc_head.embed_image(image.pooled[images])  # (B_img, E)
    text_embeds = model.itc_head.embed_text(text.pooled)              # (R, E)
    positives = caption_positives(images, owner, ids)
    losses = {}
    if itc:
        losses["itc"] = contrastive_loss(image_embeds, text_embeds, model.itc_head.scale(),
                                         positives)
    if itm:  # on each image's first caption only: three fusion passes per pair are costly
        first_text = TextFeatures(tokens=text.tokens[first], pooled=text.pooled[first],
                                  attention_mask=text.attention_mask[first])
        with torch.no_grad():
            similarity = image_embeds @ text_embeds[first].t()
        extra = _swap_negatives(model, batch, images)
        losses["itm"] = _matching(model, first_text, image.tokens[images], similarity,
                                  positives[:, first], extra)
    return losses


def _swap_negatives(model: ImageTextModel, batch: dict,
                    images: torch.Tensor) -> tuple[TextFeatures, torch.Tensor] | None:
    """Spatially mirrored captions (see data.dataset.swap_spatial), encoded, with the row of
    their image in ``images``."""
    if "swap_input_ids" not in batch:
        return None
    text = model.encode_text(batch["swap_input_ids"], batch["swap_attention_mask"])
    return text, torch.searchsorted(images, batch["swap_image"])


def _matching(model: ImageTextModel, text: TextFeatures, image_tokens: torch.Tensor,
              similarity: torch.Tensor, positives: torch.Tensor,
              extra: tuple[TextFeatures, torch.Tensor] | None = None) -> torch.Tensor:
    """ITM over the positives, one mined negative caption per image and one mined negative
    image per caption, plus ``extra`` negative (text, image row) pairs if given."""
    n = similarity.shape[0]
    rows = torch.arange(n, device=similarity.device)
    neg_text = sample_hard_negatives(similarity, positives)        # a caption per image
    neg_image = sample_hard_negatives(similarity.t(), positives)   # an image per caption
    ok_t, ok_i = neg_text >= 0, neg_image >= 0
    text_idx = torch.cat([rows, neg_text[ok_t], rows[ok_i]])
    image_idx = torch.cat([rows, rows[ok_t], neg_image[ok_i]])
    if extra is not None:
        extra_text, extra_rows = extra
        text = TextFeatures(tokens=torch.cat([text.tokens, extra_text.tokens]),
                            pooled=torch.cat([text.pooled, extra_text.pooled]),
                            attention_mask=torch.cat([text.attention_mask,
                                                      extra_text.attention_mask]))
        text_idx = torch.cat([text_idx, n + torch.arange(len(extra_rows))])
        image_idx = torch.cat([image_idx, extra_rows])
    labels = torch.zeros(len(text_idx))
    labels[:n] = 1
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
