"""Image encoders trained from scratch: a small ViT and a small CNN.

Both return patch tokens on a known grid (so attention maps can be drawn without
hard-coding geometry) and a pooled vector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tuwen.models.layers import Block
from tuwen.models.towers import Tower


@dataclass
class ImageFeatures:
    tokens: torch.Tensor           # (B, N, D) patch tokens, row-major over `grid`
    pooled: torch.Tensor           # (B, D)
    grid: tuple[int, int]          # (rows, cols) of the patch grid
    # ViT self-attention per layer (B, H, 1+N, 1+N), CLS first; when asked for
    # (an hf encoder's may have no CLS, or register tokens after it: P+N, prefix first)
    attentions: tuple[torch.Tensor, ...] | None = None
    has_cls: bool = False          # the encoder had a CLS token (kept out of `tokens`)


class ResidualConv(nn.Module):
    """x + BN(conv3x3(x)), then GELU: extra depth at one resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x + self.norm(self.conv(x)))


def conv_stem(channels: list[int]) -> nn.Sequential:
    """Stride-2 3x3 convolutions down to the patch grid, with a residual block after every
    downsampling but the first and the last.

    Early convolutions make small ViTs train much faster; the residual blocks add the depth
    that tells an 8-pixel circle from a square (a plain stem confused shapes in the captions:
    docs/experiments/2026-11-29-demo-config-history.md), at a fraction of the cost of the
    same depth at higher resolution.
    """
    layers: list[nn.Module] = []
    last = len(channels) - 2
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out),
                   nn.GELU()]
        if 0 < i < last:
            layers.append(ResidualConv(c_out))
    return nn.Sequential(*layers)


def stem_channels(patch_size: int, dim: int) -> list[int]:
    steps = int(math.log2(patch_size))
    if 2 ** steps != patch_size:
        raise ValueError(f"patch_size must be a power of two, got {patch_size}")
    widths = [min(dim, 32 * 2 ** i) for i in range(steps - 1)]
    return [3, *widths, dim]


def patch_grid(image_size: int, patch_size: int) -> tuple[int, int]:
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    return image_size // patch_size, image_size // patch_size


class SmallViT(Tower):
    """Conv stem to a (H/p, W/p) grid, learned 2-D position embeddings, a CLS token, blocks."""

    def __init__(self, image_size: int, patch_size: int, dim: int, layers: int, heads: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.grid = patch_grid(image_size, patch_size)
        self.stem = conv_stem(stem_channels(patch_size, dim))
        n = self.grid[0] * self.grid[1]
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, pixel_values: torch.Tensor,
                output_attentions: bool = False) -> ImageFeatures:
        x = self.stem(pixel_values).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos  # (B, 1+N, D)
        weights = []
        for block in self.blocks:
            x, w = block(x, output_attentions=output_attentions)
            weights.append(w)
        x = self.norm(x)
        return ImageFeatures(tokens=x[:, 1:], pooled=x[:, 0], grid=self.grid,
                             attentions=tuple(weights) if output_attentions else None,
                             has_cls=True)


class SmallCNN(Tower):
    """A convolutional encoder: stem plus residual 3x3 stages, grid cells become tokens."""

    def __init__(self, image_size: int, patch_size: int, dim: int, layers: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.grid = patch_grid(image_size, patch_size)
        self.stem = conv_stem(stem_channels(patch_size, dim))
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.GELU(),
                          nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim))
            for _ in range(layers))
        # Convolutions are translation invariant; spatial questions need absolute position.
        self.pos = nn.Parameter(torch.randn(1, self.grid[0] * self.grid[1], dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, pixel_values: torch.Tensor) -> ImageFeatures:
        x = self.stem(pixel_values)
        for stage in self.stages:
            x = nn.functional.gelu(x + stage(x))
        tokens = self.drop(x.flatten(2).transpose(1, 2)) + self.pos  # (B, N, D)
        tokens = self.norm(tokens)
        return ImageFeatures(tokens=tokens, pooled=tokens.mean(dim=1), grid=self.grid)
