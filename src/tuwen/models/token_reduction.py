"""Fewer image tokens for a language model: regroup or pool the square token grid before the
projector. The LM's cost grows with its prefix (196 to 1,369 patches for a ViT/DINOv2), and
captioning needs far fewer (docs/pretrained.md).

- ``PixelShuffle`` (nanoVLM, Idefics3): each r x r block of the (H, W) grid becomes one
  token of its r*r features side by side: (B, H*W, D) -> (B, H/r * W/r, r*r*D).
- ``AvgPool``: the grid averaged down to a target count: (B, H*W, D) -> (B, h*w, D).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def square_side(tokens: torch.Tensor) -> int:
    """The side of the square grid a (B, N, D) token sequence is (row-major)."""
    side = math.isqrt(tokens.shape[1])
    if side * side != tokens.shape[1]:
        raise ValueError(f"{tokens.shape[1]} image tokens are not a square grid; token "
                         "reduction needs square images")
    return side


class PixelShuffle(nn.Module):
    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def out_features(self, dim: int) -> int:
        return dim * self.factor ** 2

    def block(self, side: int) -> int:
        """Grid cells per side that one output token covers."""
        return self.factor

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, _, d = tokens.shape
        side, r = square_side(tokens), self.factor
        if side % r:
            raise ValueError(f"pixel_shuffle factor {r} does not divide the {side}x{side} "
                             "image token grid")
        x = tokens.reshape(b, side // r, r, side // r, r, d)  # (B, H/r, r, W/r, r, D)
        x = x.permute(0, 1, 3, 2, 4, 5)                        # (B, H/r, W/r, r, r, D)
        return x.reshape(b, (side // r) ** 2, r * r * d)       # (B, N/r², r²D)


class AvgPool(nn.Module):
    def __init__(self, tokens: int) -> None:
        super().__init__()
        self.side = math.isqrt(tokens)

    def out_features(self, dim: int) -> int:
        return dim

    def block(self, side: int) -> int:
        return side // self.side

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, _, d = tokens.shape
        side = square_side(tokens)
        if side % self.side:  # uneven cells would weigh some patches twice
            raise ValueError(f"avg_pool to {self.side}x{self.side} tokens does not divide the "
                             f"{side}x{side} image token grid")
        grid = tokens.transpose(1, 2).reshape(b, d, side, side)          # (B, D, H, W)
        pooled = nn.functional.avg_pool2d(grid, side // self.side)       # (B, D, h, w)
        return pooled.flatten(2).transpose(1, 2)                         # (B, h*w, D)


# model.decoder.reduce's type -> the module it builds from its section (None: every token)
REDUCTIONS = {"none": lambda cfg: None, "pixel_shuffle": lambda cfg: PixelShuffle(cfg.factor),
              "avg_pool": lambda cfg: AvgPool(cfg.tokens)}


def build_reduction(cfg) -> nn.Module | None:
    """The module a ``model.decoder.reduce`` section asks for (None: keep every token)."""
    return REDUCTIONS[cfg.type](cfg)


def expand_weights(weights: torch.Tensor, block: int) -> torch.Tensor:
    """Attention over reduced tokens (..., n) back onto the full grid (..., n * block²): each
    reduced token's weight shared evenly by the cells it covers (attention maps stay drawn
    on the encoder's grid)."""
    side = math.isqrt(weights.shape[-1])
    grid = weights.reshape(*weights.shape[:-1], side, side)
    grid = grid.repeat_interleave(block, -1).repeat_interleave(block, -2) / block ** 2
    return grid.flatten(-2)
