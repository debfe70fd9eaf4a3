"""Captioning: teacher-forced LM loss for training, generation for prediction
(``predict_step`` on one batch, ``generate_captions`` over many images, as text)."""

from __future__ import annotations

import torch

from tuwen.models.generation import generate
from tuwen.models.image_encoders import ImageFeatures
from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks.batching import chunk_starts, decode_until_eos, model_device


def training_step(model: ImageTextModel, batch: dict, image: ImageFeatures,
                  label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    if "caption_image" not in batch:
        return {}
    first = batch["caption_first"]  # one caption per image: the decoder is the costly part
    return {"caption": model.decoder.loss(batch["decoder_input_ids"][first],
                                          image.tokens[batch["caption_image"][first]],
                                          batch["labels"][first], label_smoothing=label_smoothing)}


@torch.no_grad()
def predict_step(model: ImageTextModel, pixel_values: torch.Tensor, *, decoding: str = "greedy",
                 max_new_tokens: int = 30, **options) -> torch.Tensor:
    """Generated token ids (B, T), without BOS, padded after EOS; ``options`` as
    ``generation.generate`` takes them (beam_size, length_penalty, top_p, generator, ...)."""
    tokens = model.encode_image(pixel_values).tokens
    return generate(model, tokens, decoding=decoding, max_new_tokens=max_new_tokens, **options)


@torch.no_grad()
def generate_captions(model: ImageTextModel, tokenizer, pixel_values: torch.Tensor, *,
                      batch_size: int = 64, decoding: str = "greedy", max_new_tokens: int = 30,
                      seed: int = 0, show_progress: bool = False, **options) -> list[str]:
    """One caption per image of ``pixel_values`` (N, 3, H, W), generated ``batch_size`` images
    at a time on the model's device; ``seed`` seeds ``decoding="top_p"`` sampling, and
    ``options`` are ``predict_step``'s (beam_size, length_penalty, top_p, temperature)."""
    device = model_device(model)
    sampler = torch.Generator(device).manual_seed(seed)
    captions: list[str] = []
    for start in chunk_starts(len(pixel_values), batch_size, f"caption ({decoding})",
                              show_progress):
        ids = predict_step(model, pixel_values[start: start + batch_size].to(device),
                           decoding=decoding, max_new_tokens=max_new_tokens,
                           generator=sampler, **options)
        captions.extend(decode_until_eos(tokenizer, ids, model.spec.eos_token_id))
    return captions
