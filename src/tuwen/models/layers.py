"""Transformer building blocks shared by every tower.

Attention has two paths: PyTorch's fused ``scaled_dot_product_attention`` for speed, and
an eager path that materialises the weights when ``output_attentions=True`` — fused
kernels never expose them, and tuwen's attention maps need them. Under bf16 autocast on a
CPU the eager path is also the faster one (the fused kernel's bf16 backward is slow there:
docs/experiments/2026-12-07-llm-step.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def cpu_bf16_autocast(device: torch.device) -> bool:
    """Inside bf16 autocast on a CPU, where the fused attention is slower than the eager one."""
    return device.type == "cpu" and torch.is_autocast_enabled("cpu") and \
        torch.get_autocast_dtype("cpu") == torch.bfloat16


def pad_to(x: torch.Tensor, length: int, dim: int, value: float = 0) -> torch.Tensor:
    """Pad ``x`` with ``value`` along ``dim`` (>= 0) up to ``length``."""
    missing = length - x.shape[dim]
    if missing <= 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, missing]
    return F.pad(x, pad, value=value)


def padding_bias(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, Lk) 1/0 mask -> additive (B, 1, 1, Lk) bias with -inf-like values on padding."""
    if attention_mask is None:
        return None
    bias = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
    bias = bias.masked_fill(attention_mask == 0, torch.finfo(dtype).min)
    return bias[:, None, None, :]


def window_bias(length: int, window: int, dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    """(1, 1, L, L) additive bias for local self-attention: position i sees positions within
    ``window`` of it, and [CLS] (position 0) sees all (Longformer's global token)."""
    index = torch.arange(length, device=device)
    allowed = (index[:, None] - index[None, :]).abs() <= window
    allowed[0] = True
    bias = torch.zeros(length, length, dtype=dtype, device=device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


def local_bias(bias: torch.Tensor | None, length: int, window: int | None, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor | None:
    """``bias`` (e.g. padding's) with ``window_bias`` added; unchanged when ``window`` is None.
    Clamped so that a padding row that sees nothing stays finite (it is masked later)."""
    if window is None:
        return bias
    local = window_bias(length, window, dtype, device)
    return local if bias is None else (bias + local).clamp(min=torch.finfo(dtype).min)


def causal_bias(length: int, dtype: torch.dtype, device: torch.device,
                past: int = 0) -> torch.Tensor:
    """(1, 1, L, past + L) additive bias that hides future positions from ``length`` new
    queries that follow ``past`` cached positions."""
    mask = torch.full((length, past + length), torch.finfo(dtype).min, dtype=dtype,
                      device=device)
    return torch.triu(mask, diagonal=past + 1)[None, None]


@dataclass
class LayerCache:
    """Keys and values one decoder layer already computed (a KV cache), each (B, H, T, Dh).

    The self-attention's grow by the new positions at every step; the cross-attention's
    are the context's (the image), projected once on the first step.
    """

    self_kv: tuple[torch.Tensor, torch.Tensor] | None = None
    cross_kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def extend(self, kv: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.self_kv is not None:
            kv = (torch.cat([self.self_kv[0], kv[0]], dim=2),
                  torch.cat([self.self_kv[1], kv[1]], dim=2))
        self.self_kv = kv
        return kv

    def context(self, project: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cross_kv is None:
            self.cross_kv = project()
        return self.cross_kv

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (beam search: each new beam continues an old one)."""
        for name in ("self_kv", "cross_kv"):
            kv = getattr(self, name)
            if kv is not None:
                setattr(self, name, (kv[0][index], kv[1][index]))


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None, else cross-attention."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def project_kv(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Lk, D) -> keys, values (B, H, Lk, Dh)."""
        b, lk, _ = source.shape
        k, v = self.kv(source).view(b, lk, 2, self.heads, self.head_dim).unbind(2)
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, output_attentions: bool = False,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``kv``: keys and values already projected (from a KV cache) instead of ``context``."""
        b, lq, d = x.shape
        q = self.q(x).view(b, lq, self.heads, self.head_dim).transpose(1, 2)  # (B, H, Lq, Dh)
        k, v = kv if kv is not None else self.project_kv(x if context is None else context)
        p = self.dropout if self.training else 0.0
        if output_attentions or cpu_bf16_autocast(x.device):
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
    """Pre-norm Transformer block: self-attention, optional cross-attention, MLP.

    With ``output_attentions=True`` it also returns the weights of its attention to the
    context: the cross-attention's (B, H, L, N_ctx) in a cross-attention block, else the
    self-attention's (B, H, L, L).
    """

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
                output_attentions: bool = False, cache: LayerCache | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """With ``cache``, ``x`` holds only the new positions; the cache is updated."""
        want_self = output_attentions and self.cross_attn is None
        h = self.norm1(x)
        kv = None if cache is None else cache.extend(self.attn.project_kv(h))
        h, weights = self.attn(h, bias=bias, output_attentions=want_self, kv=kv)
        x = x + self.drop(h)
        if self.cross_attn is not None:
            kv = None if cache is None else cache.context(
                lambda: self.cross_attn.project_kv(context))
            h, weights = self.cross_attn(self.cross_norm(x), context, context_bias,
                                         output_attentions, kv=kv)
            x = x + self.drop(h)
        x = x + self.mlp(self.norm2(x))
        return x, weights
