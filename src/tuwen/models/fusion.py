"""Fusion of text and image tokens.

``cross_attention``: the text sequence attends to the image patches in every layer
(after self-attention over the text), as in ALBEF/BLIP's multimodal encoder. The fused
sequence keeps the text's length; the pooled vector is the fused [CLS] position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tuwen.models.layers import Block, padding_bias


@dataclass
class FusionOutput:
    fused: torch.Tensor                              # (B, L, D)
    pooled: torch.Tensor                             # (B, D)
    attentions: tuple[torch.Tensor, ...] | None      # per layer (B, H, L, N_img)


class CrossAttentionFusion(nn.Module):
    def __init__(self, dim: int, layers: int, heads: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout, cross_attention=True)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                image_tokens: torch.Tensor, output_attentions: bool = False) -> FusionOutput:
        x, bias = text_tokens, padding_bias(text_mask, text_tokens.dtype)
        weights = []
        for block in self.blocks:
            x, w = block(x, bias=bias, context=image_tokens, output_attentions=output_attentions)
            weights.append(w)
        x = self.norm(x)
        return FusionOutput(fused=x, pooled=x[:, 0],
                            attentions=tuple(weights) if output_attentions else None)
