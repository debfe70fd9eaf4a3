"""A small causal Transformer decoder that reads the image through cross-attention.

Generation runs it with a KV cache (``new_cache()``): each step feeds only the new tokens,
the self-attention keys/values of earlier positions are kept per layer, and the image's
cross-attention keys/values are projected once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tuwen.models.layers import Block, LayerCache, causal_bias, padding_bias


@dataclass
class DecoderOutput:
    logits: torch.Tensor                             # (B, L, V)
    cross_attentions: tuple[torch.Tensor, ...] | None  # per layer (B, H, L, N_img)


@dataclass
class DecoderCache:
    """Per-layer keys/values and how many positions they hold."""

    layers: list[LayerCache]
    length: int = 0

    def reorder(self, index: torch.Tensor) -> None:
        for layer in self.layers:
            layer.reorder(index)


def positions_from_mask(attention_mask: torch.Tensor, new: int) -> torch.Tensor:
    """(B, T) 1/0 mask over all positions -> (B, new) position ids of the last ``new``:
    left padding takes no positions, so a padded prompt is numbered as if unpadded."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)[:, -new:]


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

    def new_cache(self) -> DecoderCache:
        return DecoderCache([LayerCache() for _ in self.blocks])

    def forward(self, input_ids: torch.Tensor, image_tokens: torch.Tensor,
                attention_mask: torch.Tensor | None = None, output_attentions: bool = False,
                cache: DecoderCache | None = None) -> DecoderOutput:
        """``attention_mask`` covers the cached and the new positions (B, past + L); with a
        ``cache``, ``input_ids`` are only the new tokens."""
        past, length = (cache.length if cache is not None else 0), input_ids.shape[1]
        if attention_mask is None:
            pos = self.pos[:, past: past + length]
        else:
            pos = self.pos[0, positions_from_mask(attention_mask, length)]  # (B, L, D)
        x = self.drop(self.embed(input_ids) + pos)  # (B, L, D)
        bias = causal_bias(length, x.dtype, x.device, past)
        if attention_mask is not None:
            bias = bias + padding_bias(attention_mask, x.dtype)
            bias = bias.clamp(min=torch.finfo(x.dtype).min)
        weights = []
        for i, block in enumerate(self.blocks):
            x, w = block(x, bias=bias, context=image_tokens, output_attentions=output_attentions,
                         cache=None if cache is None else cache.layers[i])
            weights.append(w)
        if cache is not None:
            cache.length += length
        logits = self.lm_head(self.norm(x))
        return DecoderOutput(logits=logits,
                             cross_attentions=tuple(weights) if output_attentions else None)
