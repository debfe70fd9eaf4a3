"""The contract every fusion type keeps, so tasks and attention maps work with any of them.

A fusion (``fusion_cross_attention``, ``fusion_concat``, ``fusion_weighted_sum``) is an
``nn.Module`` with ``forward(text_tokens (B, L, D), text_mask (B, L), image_tokens (B, N, D),
output_attentions=False) -> FusionOutput``; the builder's ``FUSIONS`` names them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FusionOutput:
    fused: torch.Tensor                              # (B, L, D) one vector per text position
    pooled: torch.Tensor                             # (B, D)
    # Text -> image attention, only with output_attentions=True: per layer (B, H, L, N_img)
    attentions: tuple[torch.Tensor, ...] | None
    # How much of the text each position kept, (B, L, 1) or (B, L, D); None without gates
    gates: torch.Tensor | None = None
