"""``concat`` fusion: one joint Transformer over [text; image] (single-stream, as ViLT and
VisualBERT).

Both modalities arrive projected to ``hidden_size``; a learned modality-type embedding is
added to each, the two sequences are concatenated along the sequence axis, and every
layer's self-attention mixes them freely. Text padding is masked as a key. The fused
output keeps only the text positions, so downstream heads see (B, L, D) exactly as with
``cross_attention``; the pooled vector is the text [CLS] position.
"""

from __future__ import annotations

import torch
from torch import nn

from tuwen.models.fusion import FusionOutput
from tuwen.models.layers import Block, padding_bias

TEXT, IMAGE = 0, 1


class ConcatFusion(nn.Module):
    def __init__(self, dim: int, layers: int, heads: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.modality = nn.Embedding(2, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                image_tokens: torch.Tensor, output_attentions: bool = False) -> FusionOutput:
        batch, length = text_mask.shape
        x = torch.cat([text_tokens + self.modality.weight[TEXT],
                       image_tokens + self.modality.weight[IMAGE]], dim=1)  # (B, L+N, D)
        image_mask = text_mask.new_ones(batch, image_tokens.shape[1])
        bias = padding_bias(torch.cat([text_mask, image_mask], dim=1), x.dtype)
        weights = []
        for block in self.blocks:
            x, w = block(x, bias=bias, output_attentions=output_attentions)
            if output_attentions:
                # The text-query, image-key block of the joint attention: each row sums to
                # the share of that token's attention that went to the image (the rest
                # went to the text).
                weights.append(w[:, :, :length, length:])  # (B, H, L, N)
        x = self.norm(x[:, :length])  # (B, L, D)
        return FusionOutput(fused=x, pooled=x[:, 0],
                            attentions=tuple(weights) if output_attentions else None, gates=None)
