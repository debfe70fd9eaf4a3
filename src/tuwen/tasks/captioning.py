"""Captioning: teacher-forced LM loss for training, generation for prediction."""

from __future__ import annotations

import torch

from tuwen.models.generation import beam_generate, greedy_generate
from tuwen.models.image_encoders import ImageFeatures
from tuwen.models.image_text_model import ImageTextModel
from tuwen.models.losses import caption_loss


def training_step(model: ImageTextModel, batch: dict, image: ImageFeatures,
                  label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    if "caption_image" not in batch:
        return {}
    first = batch["caption_first"]  # one caption per image: the decoder is the costly part
    out = model.decode(batch["decoder_input_ids"][first],
                       image.tokens[batch["caption_image"][first]])
    return {"caption": caption_loss(out.logits, batch["labels"][first], label_smoothing)}


@torch.no_grad()
def predict_step(model: ImageTextModel, pixel_values: torch.Tensor, *, decoding: str = "greedy",
                 max_new_tokens: int = 30, beam_size: int = 3,
                 length_penalty: float = 1.0) -> torch.Tensor:
    """Generated token ids (B, T), without BOS, padded after EOS."""
    tokens = model.encode_image(pixel_values).tokens
    if decoding == "beam" and beam_size > 1:
        return beam_generate(model, tokens, max_new_tokens, beam_size, length_penalty)
    return greedy_generate(model, tokens, max_new_tokens)
