"""``cross_attention`` fusion: the text sequence attends to the image patches in every layer
(after self-attention over the text), as in ALBEF/BLIP's multimodal encoder.

The fused sequence keeps the text's length; the pooled vector is the fused [CLS] position.
"""

from __future__ import annotations

import torch
from torch import nn

from tuwen.models.fusion import FusionOutput
from tuwen.models.layers import Block, local_bias, padding_bias


class CrossAttentionFusion(nn.Module):
    """With ``window``, the self-attention of every layer but the last is local (as in
    ``TextTransformer``): each word looks at the image as its own phrase, and the last layer
    brings the question's words together."""

    def __init__(self, dim: int, layers: int, heads: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, window: int | None = None) -> None:
        super().__init__()
        if window is not None and layers < 2:
            raise ValueError("a fusion window needs 2 or more layers: the last stays global")
        self.window = window
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout, cross_attention=True)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                image_tokens: torch.Tensor, output_attentions: bool = False) -> FusionOutput:
        x, bias = text_tokens, padding_bias(text_mask, text_tokens.dtype)
        local = local_bias(bias, x.shape[1], self.window, x.dtype, x.device)
        weights = []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x, w = block(x, bias=bias if i == last else local, context=image_tokens,
                         output_attentions=output_attentions)
            weights.append(w)
        x = self.norm(x)
        return FusionOutput(fused=x, pooled=x[:, 0],
                            attentions=tuple(weights) if output_attentions else None, gates=None)
