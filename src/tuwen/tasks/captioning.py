"""Captioning: teacher-forced LM loss for training, generation for prediction."""

from __future__ import annotations

import torch

from tuwen.models.generation import generate
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
                 max_new_tokens: int = 30, **options) -> torch.Tensor:
    """Generated token ids (B, T), without BOS, padded after EOS; ``options`` as
    ``generation.generate`` takes them (beam_size, length_penalty, top_p, generator, ...)."""
    tokens = model.encode_image(pixel_values).tokens
    return generate(model, tokens, decoding=decoding, max_new_tokens=max_new_tokens, **options)
