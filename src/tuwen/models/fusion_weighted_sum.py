"""``weighted_sum`` fusion: a learned gate between each text vector and the image.

Each text token attends once over the image patches (single-head attention pooling), which
gives an image vector aligned to that token. A gate computed from both (a gated multimodal
unit, Arevalo et al. 2017) mixes them:

    fused_i = g_i * text_i + (1 - g_i) * aligned_image_i,  g_i = sigmoid(W [text_i; aligned_i])

``gate: scalar`` gives one g per token (B, L, 1), ``gate: vector`` one per token and
dimension (B, L, D). A residual MLP and a LayerNorm follow. The text [CLS] position pools
the whole image by the same attention, so the pooled vector is the same gate applied to
the pooled text vector and the attention-pooled image vector.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tuwen.models.fusion import FusionOutput
from tuwen.models.layers import MLP


class WeightedSumFusion(nn.Module):
    def __init__(self, dim: int, gate: str = "vector", mlp_ratio: float = 4.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if gate not in ("scalar", "vector"):
            raise ValueError(f"gate must be 'scalar' or 'vector', got {gate!r}")
        self.text_proj = nn.Linear(dim, dim)
        self.image_proj = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.gate = nn.Linear(2 * dim, 1 if gate == "scalar" else dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                image_tokens: torch.Tensor, output_attentions: bool = False) -> FusionOutput:
        text = self.text_proj(text_tokens)  # (B, L, D)
        scores = self.query(text_tokens) @ self.key(image_tokens).transpose(1, 2)  # (B, L, N)
        pooling = (scores / math.sqrt(text.shape[-1])).softmax(dim=-1)
        aligned = pooling @ self.image_proj(image_tokens)  # (B, L, D)
        gates = torch.sigmoid(self.gate(torch.cat([text, aligned], dim=-1)))  # (B, L, 1 or D)
        x = gates * text + (1 - gates) * aligned
        x = self.norm(x + self.mlp(self.mlp_norm(x)))
        # Text positions never see each other here, so padding cannot leak into real tokens.
        return FusionOutput(fused=x, pooled=x[:, 0],
                            attentions=(pooling[:, None],) if output_attentions else None,
                            gates=gates)
