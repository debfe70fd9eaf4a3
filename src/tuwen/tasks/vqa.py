"""Visual question answering as classification over an answer vocabulary."""

from __future__ import annotations

import torch

from tuwen.models.image_encoders import ImageFeatures
from tuwen.models.image_text_model import ImageTextModel
from tuwen.models.losses import soft_answer_loss


def answer_logits(model: ImageTextModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  image_tokens: torch.Tensor) -> torch.Tensor:
    question = model.encode_text(input_ids, attention_mask)
    return model.vqa_head(model.fuse(question, image_tokens).pooled)


def training_step(model: ImageTextModel, batch: dict,
                  image: ImageFeatures) -> dict[str, torch.Tensor]:
    if "question_image" not in batch:
        return {}
    logits = answer_logits(model, batch["question_input_ids"], batch["question_attention_mask"],
                           image.tokens[batch["question_image"]])
    return {"vqa": soft_answer_loss(logits, batch["vqa_targets"])}


@torch.no_grad()
def predict_step(model: ImageTextModel, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the most likely answer per question (B,)."""
    image = model.encode_image(pixel_values)
    return answer_logits(model, input_ids, attention_mask, image.tokens).argmax(dim=-1)
