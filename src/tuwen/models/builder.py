"""The one place where a spec becomes modules, and sizes are checked across them.

``build_components(spec)`` returns the built, initialised modules of one model;
``ImageTextModel.from_spec`` assembles them. Name lookups are the plain dicts below
(``IMAGE_ENCODERS``, ``TEXT_ENCODERS``, ``FUSIONS``, ``DECODERS``).

The Hugging Face towers (``hf_backbone``, ``hf_decoder``, ``hf_text``) are imported inside
the builders that use them: a model made only of tuwen's own parts never loads
``transformers``' modelling code, which takes seconds to import.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import torch
from torch import nn

from tuwen.errors import ConfigError
from tuwen.models.decoder import CaptionDecoder
from tuwen.models.fusion_concat import ConcatFusion
from tuwen.models.fusion_cross_attention import CrossAttentionFusion
from tuwen.models.fusion_weighted_sum import WeightedSumFusion
from tuwen.models.heads import build_head
from tuwen.models.image_encoders import SmallCNN, SmallViT
from tuwen.models.rnn_text import RNNTextEncoder
from tuwen.models.spec import ModelSpec
from tuwen.models.text_encoders import TextTransformer
from tuwen.models.token_reduction import build_reduction
from tuwen.models.towers import Tower

# Tower builders take (spec, hf_configs) and record an hf tower's resolved config in
# hf_configs, which the saved config.json keeps so that from_pretrained rebuilds it offline.

def _small_vit(spec: ModelSpec, hf_configs: dict) -> Tower:
    cfg, m = spec.model.image_encoder, spec.model
    _check_patches(spec)
    return SmallViT(spec.image_size, cfg.patch_size, m.hidden_size, cfg.layers, cfg.heads,
                    m.mlp_ratio, m.dropout)


def _small_cnn(spec: ModelSpec, hf_configs: dict) -> Tower:
    cfg, m = spec.model.image_encoder, spec.model
    _check_patches(spec)
    return SmallCNN(spec.image_size, cfg.patch_size, m.hidden_size, cfg.layers, m.dropout)


def _check_patches(spec: ModelSpec) -> None:
    if spec.image_size % spec.model.image_encoder.patch_size:
        raise ValueError(f"data.image_size={spec.image_size} is not a multiple of "
                         f"model.image_encoder.patch_size={spec.model.image_encoder.patch_size}")


def _hf_image(spec: ModelSpec, hf_configs: dict) -> Tower:
    from tuwen.models.hf_backbone import hf_tower
    from tuwen.models.hf_image import HFImageEncoder, probe_backbone

    where = "model.image_encoder"
    backbone, config = hf_tower(spec.model.image_encoder, "image", where,
                                hf_configs.get("image_encoder"), {"image_size": spec.image_size})
    # the grid and widths from one forward at the model's image size; ViT, CLIP, SigLIP, ...
    # interpolate their position embeddings to it (DINOv2's config says 518 px, its
    # processor 224)
    layout = probe_backbone(backbone, spec.image_size, where)
    hf_configs["image_encoder"] = config.to_dict()
    return HFImageEncoder(backbone, layout.feature_size, spec.model.hidden_size,
                          layout.pooled_size, layout.interpolate)


IMAGE_ENCODERS = {"small_vit": _small_vit, "small_cnn": _small_cnn, "hf": _hf_image}


def _transformer_text(spec: ModelSpec, hf_configs: dict) -> Tower:
    cfg, m = spec.model.text_encoder, spec.model
    vocab_size, pad = spec.text_vocab
    return TextTransformer(vocab_size, spec.max_text_length, m.hidden_size, cfg.layers,
                           cfg.heads, m.mlp_ratio, m.dropout, pad, cfg.window)


def _rnn_text(spec: ModelSpec, hf_configs: dict) -> Tower:
    cfg, m = spec.model.text_encoder, spec.model
    vocab_size, pad = spec.text_vocab
    return RNNTextEncoder(cfg.type, vocab_size, m.hidden_size, cfg.layers, cfg.bidirectional,
                          m.dropout, pad)


def _hf_text(spec: ModelSpec, hf_configs: dict) -> Tower:
    from tuwen.models.hf_backbone import hf_tower, hidden_size_of
    from tuwen.models.hf_text import HFTextEncoder, resolve_pooling

    where = "model.text_encoder"
    vocab_size, pad = spec.text_vocab
    backbone, config = hf_tower(spec.model.text_encoder, "text", where,
                                hf_configs.get("text_encoder"),
                                {"vocab_size": vocab_size, "pad_token_id": pad})
    if config.vocab_size < vocab_size:
        raise ConfigError(f"{where}: {config.model_type!r} has {config.vocab_size} token "
                          f"embeddings, fewer than the tokenizer's {vocab_size} tokens")
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and positions < spec.max_text_length:
        raise ConfigError(f"{where}: {config.model_type!r} takes at most {positions} tokens, "
                          f"less than data.max_text_length={spec.max_text_length}")
    saved = hf_configs.get("text_encoder_pooling")
    if saved is not None:
        pooling = saved["mode"]
    elif "text_encoder" in hf_configs:  # saved before pooling was recorded: [CLS]
        pooling = "cls"
    else:
        pooling = resolve_pooling(spec.model.text_encoder.pooling,
                                  spec.model.text_encoder.name_or_path, where)
    hf_configs["text_encoder"] = config.to_dict()
    hf_configs["text_encoder_pooling"] = {"mode": pooling}
    return HFTextEncoder(backbone, hidden_size_of(config), spec.model.hidden_size, pooling)


TEXT_ENCODERS = {"transformer": _transformer_text, "lstm": _rnn_text, "gru": _rnn_text,
                 "hf": _hf_text}


def build_tower(builders: dict, name: str, spec: ModelSpec, hf_configs: dict) -> Tower:
    tower = builders[getattr(spec.model, name).type](spec, hf_configs)
    if getattr(spec.model, name).freeze:
        tower.freeze()
    return tower


# Each fusion takes (hidden_size, <its config keys>, mlp_ratio=, dropout=).
FUSIONS = {"concat": ConcatFusion, "weighted_sum": WeightedSumFusion,
           "cross_attention": CrossAttentionFusion}


def build_fusion(spec: ModelSpec) -> nn.Module:
    m = spec.model
    return FUSIONS[m.fusion.type](m.hidden_size, **m.fusion.model_dump(exclude={"type"}),
                                  mlp_ratio=m.mlp_ratio, dropout=m.dropout)


def _transformer_decoder(spec: ModelSpec, hf_configs: dict) -> nn.Module:
    cfg, m = spec.model.decoder, spec.model
    return CaptionDecoder(spec.vocab_size, spec.max_text_length, m.hidden_size, cfg.layers,
                          cfg.heads, m.mlp_ratio, m.dropout, spec.pad_token_id)


def _hf_decoder(spec: ModelSpec, hf_configs: dict) -> nn.Module:
    from tuwen.models.hf_decoder import HFCausalLMDecoder, causal_lm

    cfg, where = spec.model.decoder, "model.decoder"
    special = {"vocab_size": spec.vocab_size, "pad_token_id": spec.pad_token_id,
               "bos_token_id": spec.bos_token_id, "eos_token_id": spec.eos_token_id}
    lm, config = causal_lm(cfg, where, hf_configs.get("decoder"), special)
    if config.vocab_size < spec.vocab_size:
        raise ConfigError(f"{where}: {config.model_type!r} has {config.vocab_size} token "
                          f"embeddings, fewer than the tokenizer's {spec.vocab_size} tokens")
    hf_configs["decoder"] = config.to_dict()
    # a chat template's turns come on top of the text: prompts, the reply and its end
    length = spec.max_text_length + (0 if spec.chat is None else spec.chat.extra_length)
    decoder = HFCausalLMDecoder(lm, spec.model.hidden_size, cfg.conditioning, cfg.projector,
                                length, build_reduction(cfg.reduce))
    if cfg.freeze:
        decoder.freeze()
    return decoder


DECODERS = {"transformer": _transformer_decoder, "hf_causal_lm": _hf_decoder}


@dataclass
class Components:
    """The built modules of one model and the spec they came from, its ``hf_configs``
    completed with the resolved config of every Hugging Face tower."""

    spec: ModelSpec
    image_encoder: Tower
    text_encoder: Tower
    fusion: nn.Module
    decoder: nn.Module
    heads: dict[str, nn.Module]   # attribute -> head, as ModelSpec.heads names them

    def modules(self) -> nn.ModuleList:
        """All of them, in the order ImageTextModel registers them."""
        return nn.ModuleList([self.image_encoder, self.text_encoder, self.fusion, self.decoder,
                              *self.heads.values()])


def build_components(spec: ModelSpec) -> Components:
    m, hf_configs = spec.model, dict(spec.hf_configs)
    image_encoder = build_tower(IMAGE_ENCODERS, "image_encoder", spec, hf_configs)
    text_encoder = build_tower(TEXT_ENCODERS, "text_encoder", spec, hf_configs)
    decoder = DECODERS[m.decoder.type](spec, hf_configs)
    fusion = build_fusion(spec)
    heads = {name: build_head(h) for name, h in spec.head_specs().items()}
    parts = Components(replace(spec, hf_configs=hf_configs), image_encoder, text_encoder,
                       fusion, decoder, heads)
    init_new_weights(parts.modules())
    return parts


def init_new_weights(model: nn.Module) -> None:
    """``init_weights`` on every module outside Hugging Face models (pretrained weights, or
    the HF init of a random one; LoRA's B = 0 start too)."""
    # Only an hf tower loads transformers' modelling code; without it no module is an HF model.
    hf = sys.modules.get("transformers.modeling_utils")
    keep = {id(sub) for module in model.modules()
            if hf is not None and isinstance(module, hf.PreTrainedModel)
            for sub in module.modules()}
    with torch.no_grad():
        for module in model.modules():
            if id(module) not in keep:
                init_weights(module)


def init_weights(module: nn.Module) -> None:
    """GPT-2/BERT-style init; PyTorch's N(0, 1) embeddings make tied LM logits explode."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
