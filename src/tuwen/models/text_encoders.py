"""Text encoders trained from scratch: a small bidirectional Transformer.

LSTM/GRU encoders are in rnn_text.py, Hugging Face ones in hf_text.py; all return
``TextFeatures``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tuwen.models.layers import Block, local_bias, padding_bias
from tuwen.models.towers import Tower


@dataclass
class TextFeatures:
    tokens: torch.Tensor           # (B, L, D)
    pooled: torch.Tensor           # (B, D) the [CLS] position
    attention_mask: torch.Tensor   # (B, L)


class TextTransformer(Tower):
    """Token and learned position embeddings, pre-norm Transformer blocks, [CLS] pooling.

    With ``window``, each token attends only to tokens within ``window`` positions and
    [CLS] to all: a token then stands for its own phrase ("red circle"), not a mix of every
    object the text names (docs/experiments/2026-11-29-relative-position.md)."""

    def __init__(self, vocab_size: int, max_length: int, dim: int, layers: int, heads: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, pad_token_id: int = 0,
                 window: int | None = None) -> None:
        super().__init__()
        self.window = window
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_token_id)
        self.pos = nn.Parameter(torch.randn(1, max_length, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        x = self.drop(self.embed(input_ids) + self.pos[:, : input_ids.shape[1]])  # (B, L, D)
        bias = local_bias(padding_bias(attention_mask, x.dtype), x.shape[1], self.window,
                          x.dtype, x.device)
        for block in self.blocks:
            x, _ = block(x, bias=bias)
        x = self.norm(x)
        return TextFeatures(tokens=x, pooled=x[:, 0], attention_mask=attention_mask)
