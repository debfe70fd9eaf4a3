"""The spec behind ``ImageTextModel.from_encoders``: two towers named the way users name them.

    model = ImageTextModel.from_encoders("google/vit-base-patch16-224", "bert-base-uncased",
                                         hidden_size=512, fusion="cross_attention")

Each tower may be a hub name or local folder, a ``transformers`` config (object, or dict with
``model_type``) for random weights, a tuwen tower type ("small_vit", "lstm", ...) or a full
tower section (``{"type": "gru", "bidirectional": False}``). A named HF text tower brings its
tokenizer (``model.tokenizer``); with a named causal LM decoder as well, the LM's is
``model.tokenizer`` and the text tower's ``model.text_tokenizer``; the image size and
normalisation come from the image tower.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

from tuwen.config import ModelConfig, config_from_dict
from tuwen.errors import ConfigError
from tuwen.models.builder import IMAGE_ENCODERS, TEXT_ENCODERS
from tuwen.models.chat import decoder_chat, special_ids
from tuwen.models.hf_image import Preprocessing, resolve_preprocessing
from tuwen.models.hf_text import hf_tokenizer
from tuwen.models.spec import ModelSpec

DEFAULT_IMAGE_SIZE = 224
DEFAULT_VOCAB_SIZE = 30522  # BERT's, for towers that bring no tokenizer and no vocab size


def tower_section(value: Any, types: dict, role: str) -> dict:
    """A tower given as name, folder, HF config or tuwen section -> its config section."""
    if isinstance(value, PretrainedConfig):
        return {"type": "hf", "hf_config": value.to_dict()}
    if isinstance(value, dict):
        return {"type": "hf", "hf_config": dict(value)} if "model_type" in value else dict(value)
    if isinstance(value, (str, Path)):
        if str(value) in types and str(value) != "hf":
            return {"type": str(value)}
        return {"type": "hf", "name_or_path": str(value)}
    raise ConfigError(f"from_encoders: {role} must be a hub name, a folder, a transformers "
                      f"config or a tuwen tower section, got {type(value).__name__}")


def spec_from_encoders(image_encoder: Any, text_encoder: Any, *, hidden_size: int = 256,
                       fusion: str | dict = "cross_attention", image_size: int | None = None,
                       vocab_size: int | None = None, max_text_length: int = 64,
                       num_answers: int = 1, **model_fields: Any) -> tuple[ModelSpec, Any, Any]:
    """The spec, the decoder's tokenizer and the text encoder's own (None when it shares
    the decoder's). A named causal LM decoder brings the decoder's, else a named HF text
    tower's serves both; with neither, both are None.

    ``model_fields``: any other ``model`` config key (embed_dim, decoder, dropout, ...)."""
    raw = {"hidden_size": hidden_size, **model_fields,
           "image_encoder": tower_section(image_encoder, IMAGE_ENCODERS, "image_encoder"),
           "text_encoder": tower_section(text_encoder, TEXT_ENCODERS, "text_encoder"),
           "fusion": {"type": fusion} if isinstance(fusion, str) else dict(fusion)}
    data = {"image_size": image_size or DEFAULT_IMAGE_SIZE, "max_text_length": max_text_length}
    model_cfg = config_from_dict({"model": raw, "data": data}, "from_encoders").model
    default = Preprocessing(data["image_size"], (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    pre = resolve_preprocessing(model_cfg, default, log=image_size is not None)
    tokenizer, text_tokenizer = _tokenizers(model_cfg)
    text_fields = ({} if text_tokenizer is None else
                   {"text_vocab_size": len(text_tokenizer),
                    "text_pad_token_id": text_tokenizer.pad_token_id})
    chat = decoder_chat(model_cfg, tokenizer)
    spec = ModelSpec(model=model_cfg, vocab_size=_vocab_size(model_cfg, tokenizer, vocab_size),
                     num_answers=num_answers, image_size=pre.size,
                     max_text_length=max_text_length, image_mean=pre.mean, image_std=pre.std,
                     chat=chat, **_special_ids(model_cfg, tokenizer, chat), **text_fields)
    return spec, tokenizer, text_tokenizer


def _tokenizers(model_cfg: ModelConfig) -> tuple[Any, Any]:
    """(decoder's, text encoder's own or None), as training chooses them."""
    text, decoder = model_cfg.text_encoder, model_cfg.decoder
    text_name = text.name_or_path if text.type == "hf" else None
    lm_name = decoder.name_or_path if decoder.type == "hf_causal_lm" else None
    text_tok = None if text_name is None else hf_tokenizer(text_name, "model.text_encoder")
    if lm_name is None:
        return text_tok, None
    lm_tok = hf_tokenizer(lm_name, "model.decoder")
    return lm_tok, None if text_name in (None, lm_name) else text_tok


def _vocab_size(model_cfg: ModelConfig, tokenizer, vocab_size: int | None) -> int:
    if tokenizer is not None:
        return len(tokenizer)
    text = model_cfg.text_encoder
    if vocab_size is None and text.type == "hf":
        vocab_size = text.hf_config.get("vocab_size")
    return vocab_size or DEFAULT_VOCAB_SIZE


def _special_ids(model_cfg: ModelConfig, tokenizer, chat) -> dict[str, int]:
    if tokenizer is not None:
        return special_ids(tokenizer, chat)
    text = model_cfg.text_encoder
    if text.type == "hf" and isinstance(text.hf_config.get("pad_token_id"), int):
        return {"pad_token_id": text.hf_config["pad_token_id"]}
    return {}  # tuwen's WordPiece layout: [PAD]=0, [BOS]=4, [EOS]=5
