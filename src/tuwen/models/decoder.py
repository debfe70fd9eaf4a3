"""A small causal Transformer decoder that reads the image through cross-attention."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tuwen.models.layers import Block, causal_bias, padding_bias


@dataclass
class DecoderOutput:
    logits: torch.Tensor                             # (B, L, V)
    cross_attentions: tuple[torch.Tensor, ...] | None  # per layer (B, H, L, N_img)


class CaptionDecoder(nn.Module):
    def __init__(self, vocab_size: int, max_length: int, dim: int, layers: int, heads: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, pad_token_id: int = 0) -> None:
        super().__init__()
        self.max_length = max_length
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_token_id)
        self.pos = nn.Parameter(torch.randn(1, max_length, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout, cross_attention=True)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight  # tied, as in GPT-2
        self.drop = nn.Dropout(dropout)

    def forward(self, input_ids: torch.Tensor, image_tokens: torch.Tensor,
                attention_mask: torch.Tensor | None = None,
                output_attentions: bool = False) -> DecoderOutput:
        length = input_ids.shape[1]
        x = self.drop(self.embed(input_ids) + self.pos[:, :length])  # (B, L, D)
        bias = causal_bias(length, x.dtype, x.device)
        if attention_mask is not None:
            bias = bias + padding_bias(attention_mask, x.dtype)
            bias = bias.clamp(min=torch.finfo(x.dtype).min)
        weights = []
        for block in self.blocks:
            x, w = block(x, bias=bias, context=image_tokens, output_attentions=output_attentions)
            weights.append(w)
        logits = self.lm_head(self.norm(x))
        return DecoderOutput(logits=logits,
                             cross_attentions=tuple(weights) if output_attentions else None)
