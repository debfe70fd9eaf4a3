"""ImageTextModel: the composite of the towers, the fusion, the decoder and the heads.

It takes built modules and offers the few entry points the tasks need. It assembles itself
from a spec (``from_spec``, through ``builder.build_components``), from two named towers
(``from_encoders``) or from a saved folder (``from_pretrained``). Saving writes
``config.json`` + ``model.safetensors``, the tokenizers the model holds (``from_encoders``/
``from_pretrained`` set them: the decoder's in the folder, a text encoder's own in
``text_tokenizer/``) and, for a Hugging Face image tower, ``preprocessor_config.json``;
training writes its tokenizer and answer vocabulary itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from tuwen import fsio
from tuwen.errors import TuwenError
from tuwen.model_files import (
    CONFIG_FILE,
    PROCESSOR_FILE,
    TEXT_TOKENIZER_DIR,
    TOKENIZER_CONFIG_FILE,
    WEIGHTS_FILE,
)
from tuwen.models.builder import Components, build_components
from tuwen.models.decoder import DecoderOutput
from tuwen.models.fusion import FusionOutput
from tuwen.models.hf_image import Preprocessing, preprocessor_config
from tuwen.models.image_encoders import ImageFeatures
from tuwen.models.length_buckets import length_groups, run_grouped
from tuwen.models.spec import ModelSpec
from tuwen.models.text_encoders import TextFeatures


@dataclass
class ImageTextOutput:
    fused: torch.Tensor                           # (B, L, D) fused text sequence
    pooled: torch.Tensor                          # (B, D)
    image_embeds: torch.Tensor                    # (B, E) unit-norm, ITC space
    text_embeds: torch.Tensor                     # (B, E) unit-norm, ITC space
    attentions: tuple[torch.Tensor, ...] | None   # fusion cross-attention per layer


class ImageTextModel(nn.Module):
    def __init__(self, spec: ModelSpec, image_encoder: nn.Module, text_encoder: nn.Module,
                 fusion: nn.Module, decoder: nn.Module, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.spec = spec
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        self.fusion, self.decoder = fusion, decoder
        for name, head in heads.items():  # the tasks' heads: model.itc_head, model.vqa_head, ...
            self.add_module(name, head)
        self.head_names = tuple(heads)
        self.tokenizer = None  # the decoder's; saved with the model when set (not used by forward)
        self.text_tokenizer = None  # the text encoder's own, when it is not the decoder's

    @classmethod
    def from_components(cls, parts: Components) -> ImageTextModel:
        return cls(parts.spec, parts.image_encoder, parts.text_encoder, parts.fusion,
                   parts.decoder, parts.heads)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ImageTextModel:
        """A freshly initialised model (pretrained weights in its Hugging Face towers)."""
        return cls.from_components(build_components(spec))

    @classmethod
    def from_encoders(cls, image_encoder: Any, text_encoder: Any, *, hidden_size: int = 256,
                      fusion: str | dict = "cross_attention", **options: Any) -> ImageTextModel:
        """A model from two towers: hub names, folders, HF configs (objects or dicts with
        ``model_type``) or tuwen tower types/sections; see ``from_encoders.spec_from_encoders``
        for the options. A named HF text tower brings its tokenizer (``model.tokenizer``)."""
        from tuwen.models.from_encoders import spec_from_encoders

        spec, tokenizer, text_tokenizer = spec_from_encoders(
            image_encoder, text_encoder, hidden_size=hidden_size, fusion=fusion, **options)
        model = cls.from_spec(spec)
        model.tokenizer, model.text_tokenizer = tokenizer, text_tokenizer
        return model

    def encode_image(self, pixel_values: torch.Tensor) -> ImageFeatures:
        return self.image_encoder(pixel_values)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        """The text tower; in ``model.length_buckets`` groups of similar length (less padding,
        the same values at real positions; see models.length_buckets)."""
        groups = length_groups(attention_mask, self.spec.model.length_buckets)
        if groups is None:
            return self.text_encoder(input_ids, attention_mask)

        def run(ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
            out = self.text_encoder(ids, mask)
            return [out.tokens, out.pooled]

        tokens, pooled = run_grouped(run, groups, [], [input_ids, attention_mask], [True, False])
        return TextFeatures(tokens=tokens, pooled=pooled, attention_mask=attention_mask)

    def fuse(self, text: TextFeatures, image_tokens: torch.Tensor,
             output_attentions: bool = False) -> FusionOutput:
        """The fusion, length-bucketed like ``encode_text`` unless attentions are asked for."""
        groups = None if output_attentions else \
            length_groups(text.attention_mask, self.spec.model.length_buckets)
        if groups is None:
            return self.fusion(text.tokens, text.attention_mask, image_tokens, output_attentions)

        def run(image: torch.Tensor, tokens: torch.Tensor,
                mask: torch.Tensor) -> list[torch.Tensor]:
            out = self.fusion(tokens, mask, image)
            return [out.fused, out.pooled] + ([] if out.gates is None else [out.gates])

        merged = run_grouped(run, groups, [image_tokens], [text.tokens, text.attention_mask],
                             [True, False, True])
        return FusionOutput(fused=merged[0], pooled=merged[1], attentions=None,
                            gates=merged[2] if len(merged) > 2 else None)

    def decode(self, input_ids: torch.Tensor, image_tokens: torch.Tensor,
               output_attentions: bool = False, attention_mask: torch.Tensor | None = None,
               cache=None) -> DecoderOutput:
        """Next-token logits; ``cache`` (from ``decoder.new_cache()``) makes it incremental."""
        return self.decoder(input_ids, image_tokens, attention_mask=attention_mask,
                            output_attentions=output_attentions, cache=cache)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, output_attentions: bool = False) -> ImageTextOutput:
        image = self.encode_image(pixel_values)
        text = self.encode_text(input_ids, attention_mask)
        fused = self.fuse(text, image.tokens, output_attentions)
        return ImageTextOutput(fused=fused.fused, pooled=fused.pooled,
                               image_embeds=self.itc_head.embed_image(image.pooled),
                               text_embeds=self.itc_head.embed_text(text.pooled),
                               attentions=fused.attentions)

    # ------------------------------------------------------------ persistence

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        fsio.write_json(directory / CONFIG_FILE, self.spec.to_dict(), indent=2)
        with fsio.atomic_path(directory / WEIGHTS_FILE, (SafetensorError,)) as tmp:
            save_model(self, str(tmp))  # handles the tied LM head
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(directory))
        if self.text_tokenizer is not None:
            self.text_tokenizer.save_pretrained(str(directory / TEXT_TOKENIZER_DIR))
        if self.spec.model.image_encoder.type == "hf":  # tuwen's preprocessing, for HF tools
            spec = self.spec
            processor = preprocessor_config(Preprocessing(spec.image_size, spec.image_mean,
                                                          spec.image_std))
            fsio.write_json(directory / PROCESSOR_FILE, processor, indent=2)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ImageTextModel:
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise TuwenError(f"{path}: missing; {directory} is not a saved tuwen model")
        try:
            spec = ModelSpec.from_dict(json.loads(config_path.read_text()))
        except (ValueError, KeyError, TypeError) as err:
            raise TuwenError(f"{config_path}: not a valid tuwen model config ({err})") from None
        model = cls.from_spec(spec)
        try:
            missing, unexpected = load_model(model, str(weights_path), strict=False)
        except (RuntimeError, OSError, SafetensorError) as err:  # shapes differ, or not safetensors
            raise TuwenError(f"{weights_path}: weights do not fit {config_path} "
                             f"({str(err).splitlines()[-1].strip()})") from None
        if missing or unexpected:
            raise TuwenError(f"{weights_path}: weights do not fit the config (missing "
                             f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        model.tokenizer = saved_tokenizer(directory)
        if (directory / TEXT_TOKENIZER_DIR).is_dir():
            model.text_tokenizer = saved_tokenizer(directory / TEXT_TOKENIZER_DIR)
        return model.eval()


def build_model(spec: ModelSpec) -> ImageTextModel:
    """A freshly initialised model for ``spec``; the same as ``ImageTextModel.from_spec``."""
    return ImageTextModel.from_spec(spec)


# The class names a plain fast tokenizer (tuwen's own WordPiece) is saved under, by
# transformers 5 and 4; it loads without AutoTokenizer, whose import indexes every model
# that transformers knows and costs seconds.
PLAIN_FAST_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def saved_tokenizer(directory: Path):
    """The tokenizer saved beside a model, or None when there is none."""
    config_file = directory / TOKENIZER_CONFIG_FILE
    if not config_file.is_file():
        return None
    try:
        tok = _tokenizer_class(config_file).from_pretrained(str(directory),
                                                            local_files_only=True)
    except Exception as err:  # tokenizers' Rust errors are bare Exceptions
        first = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise TuwenError(f"{directory}: cannot load the saved tokenizer ({first})") from None
    if tok.pad_token_id is None:  # every tokenizer tuwen saves pads
        raise TuwenError(f"{directory}: the saved tokenizer has no padding token; is "
                         f"{TOKENIZER_CONFIG_FILE} incomplete?")
    return tok


def _tokenizer_class(config_file: Path):
    if json.loads(config_file.read_text()).get("tokenizer_class") in PLAIN_FAST_TOKENIZERS:
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast
    from transformers import AutoTokenizer

    return AutoTokenizer
