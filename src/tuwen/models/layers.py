"""Transformer building blocks shared by every tower.

Attention has two paths: PyTorch's fused ``scaled_dot_product_attention`` for speed, and
an eager path that materialises the weights when ``output_attentions=True`` — fused
kernels never expose them, and tuwen's attention maps need them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def padding_bias(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, Lk) 1/0 mask -> additive (B, 1, 1, Lk) bias with -inf-like values on padding."""
    if attention_mask is None:
        return None
    bias = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
    bias = bias.masked_fill(attention_mask == 0, torch.finfo(dtype).min)
    return bias[:, None, None, :]


def causal_bias(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, 1, L, L) additive bias that hides future positions."""
    mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype, device=device)
    return torch.triu(mask, diagonal=1)[None, None]


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None, else cross-attention."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, output_attentions: bool = False,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, lq, d = x.shape
        context = x if context is None else context
        q = self.q(x).view(b, lq, self.heads, self.head_dim).transpose(1, 2)  # (B, H, Lq, Dh)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, self.head_dim).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, H, Lk, Dh)
        p = self.dropout if self.training else 0.0
        if output_attentions:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, H, Lq, Lk)
            if bias is not None:
                scores = scores + bias
            weights = scores.softmax(dim=-1)
            out = F.dropout(weights, p, self.training) @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        out = out.transpose(1, 2).reshape(b, lq, d)  # (B, Lq, D)
        return self.out(out), weights


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-norm Transformer block: self-attention, optional cross-attention, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 cross_attention: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.cross_norm = nn.LayerNorm(dim) if cross_attention else None
        self.cross_attn = Attention(dim, heads, dropout) if cross_attention else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_bias: torch.Tensor | None = None,
                output_attentions: bool = False,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h, _ = self.attn(self.norm1(x), bias=bias)
        x = x + self.drop(h)
        cross_weights = None
        if self.cross_attn is not None:
            h, cross_weights = self.cross_attn(self.cross_norm(x), context, context_bias,
                                               output_attentions)
            x = x + self.drop(h)
        x = x + self.mlp(self.norm2(x))
        return x, cross_weights
