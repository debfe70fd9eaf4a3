"""The one place where a config becomes modules, and sizes are checked across them."""

from __future__ import annotations

import torch
from torch import nn

from tuwen.models.decoder import CaptionDecoder
from tuwen.models.fusion import CrossAttentionFusion
from tuwen.models.heads import AnswerHead, ContrastiveHead, MatchingHead
from tuwen.models.image_encoders import SmallCNN, SmallViT
from tuwen.models.image_text_model import ImageTextModel, ModelSpec
from tuwen.models.text_encoders import TextTransformer


def build_image_encoder(spec: ModelSpec) -> nn.Module:
    cfg, m = spec.model.image_encoder, spec.model
    if cfg.type == "small_vit":
        return SmallViT(spec.image_size, cfg.patch_size, m.hidden_size, cfg.layers, cfg.heads,
                        m.mlp_ratio, m.dropout)
    return SmallCNN(spec.image_size, cfg.patch_size, m.hidden_size, cfg.layers, m.dropout)


TEXT_ENCODERS = {"transformer": TextTransformer}
FUSIONS = {"cross_attention": CrossAttentionFusion}
DECODERS = {"transformer": CaptionDecoder}


def build_model(spec: ModelSpec) -> ImageTextModel:
    m = spec.model
    if spec.image_size % m.image_encoder.patch_size:
        raise ValueError(f"data.image_size={spec.image_size} is not a multiple of "
                         f"model.image_encoder.patch_size={m.image_encoder.patch_size}")
    text_cfg, fusion_cfg, dec_cfg = m.text_encoder, m.fusion, m.decoder
    text_encoder = TEXT_ENCODERS[text_cfg.type](
        spec.vocab_size, spec.max_text_length, m.hidden_size, text_cfg.layers, text_cfg.heads,
        m.mlp_ratio, m.dropout, spec.pad_token_id)
    fusion = FUSIONS[fusion_cfg.type](m.hidden_size, fusion_cfg.layers, fusion_cfg.heads,
                                      m.mlp_ratio, m.dropout)
    decoder = DECODERS[dec_cfg.type](
        spec.vocab_size, spec.max_text_length, m.hidden_size, dec_cfg.layers, dec_cfg.heads,
        m.mlp_ratio, m.dropout, spec.pad_token_id)
    model = ImageTextModel(
        spec, build_image_encoder(spec), text_encoder, fusion, decoder,
        ContrastiveHead(m.hidden_size, m.embed_dim), MatchingHead(m.hidden_size),
        AnswerHead(m.hidden_size, spec.num_answers, m.dropout))
    with torch.no_grad():
        model.apply(init_weights)
    return model


def init_weights(module: nn.Module) -> None:
    """GPT-2/BERT-style init; PyTorch's N(0, 1) embeddings make tied LM logits explode."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
