"""Task heads on top of the towers, and the table of head types.

A task declares the heads it adds as ``{attribute: {"type": <a HEADS key>, **arguments}}``
(``ModelSpec.heads``); the builder makes them from ``HEADS`` and the model registers each
under its attribute (``model.itc_head``), so saved weights keep their names.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ContrastiveHead(nn.Module):
    """Projects pooled image and text vectors to a shared unit sphere; learnable temperature."""

    def __init__(self, dim: int, embed_dim: int, init_temperature: float = 0.07) -> None:
        super().__init__()
        self.image_proj = nn.Linear(dim, embed_dim)
        self.text_proj = nn.Linear(dim, embed_dim)
        # Shape (1,), not a 0-d scalar: FSDP cannot shard 0-d parameters.
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / init_temperature)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "logit_scale"  # models saved before the (1,) shape hold a 0-d scalar
        if key in state_dict and state_dict[key].dim() == 0:
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def embed_image(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(pooled), dim=-1)

    def embed_text(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(pooled), dim=-1)

    def scale(self) -> torch.Tensor:
        # CLIP's clamp: beyond 100 the logits saturate and training becomes unstable.
        return self.logit_scale.clamp(max=math.log(100.0)).exp().squeeze(0)


class MatchingHead(nn.Module):
    """Binary image-text matching on the fused [CLS] vector."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(dim, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled)


class AnswerHead(nn.Module):
    """VQA as classification over an answer vocabulary (the VQAv2 standard).

    The input is the fused [CLS] vector and, with ``queries`` > 0, that many learned
    queries' attention-pooled reads of the fused question tokens: separate reads let the
    classifier see two objects of a question side by side (measured on the shapes demo:
    docs/experiments/2026-11-29-demo-config-history.md).

    With ``positions`` > 0 it also takes the fused tokens at the first ``positions`` places
    side by side (padding zeroed): which object a question names first is then where it
    stands, not something a content-based read must find. Reads by content average over
    the tokens they pick, and an average of two objects' places says nothing about which is
    further left.
    """

    def __init__(self, dim: int, num_answers: int, dropout: float = 0.0,
                 queries: int = 0, positions: int = 0) -> None:
        super().__init__()
        self.queries = queries
        self.positions = positions
        if queries:
            self.query = nn.Parameter(torch.randn(queries, dim) * 0.02)
            self.key = nn.Linear(dim, dim)
        width = dim * (1 + queries + positions)
        self.net = nn.Sequential(nn.Linear(width, 2 * dim), nn.GELU(), nn.LayerNorm(2 * dim),
                                 nn.Dropout(dropout), nn.Linear(2 * dim, num_answers))

    def forward(self, pooled: torch.Tensor, tokens: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``pooled`` (B, D); ``tokens`` (B, L, D) and their ``mask`` (B, L) when queries or
        positions > 0."""
        if (self.queries or self.positions) and (tokens is None or mask is None):
            raise ValueError("this answer head reads the fused tokens: pass tokens and mask")
        parts = [pooled]
        if self.queries:
            scores = torch.einsum("kd,bld->bkl", self.query, self.key(tokens))
            scores = (scores / tokens.shape[-1] ** 0.5).masked_fill(
                ~mask.bool()[:, None, :], float("-inf"))
            reads = torch.einsum("bkl,bld->bkd", scores.softmax(dim=-1), tokens)
            parts.append(reads.flatten(1))
        if self.positions:
            placed = (tokens * mask[..., None].to(tokens.dtype))[:, :self.positions]
            placed = F.pad(placed, (0, 0, 0, self.positions - placed.shape[1]))
            parts.append(placed.flatten(1))
        return self.net(torch.cat(parts, dim=1))


class LinearHead(nn.Module):
    """A linear read of a pooled vector: the head a simple added task needs."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, out)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(pooled)


HEADS = {"contrastive": ContrastiveHead, "matching": MatchingHead, "answer": AnswerHead,
         "linear": LinearHead}


def head_spec(kind: str, **arguments) -> dict:
    """One entry of ``ModelSpec.heads``."""
    if kind not in HEADS:
        raise ValueError(f"head type {kind!r}: expected one of {', '.join(HEADS)}")
    return {"type": kind, **arguments}


def build_head(spec: dict) -> nn.Module:
    arguments = {k: v for k, v in spec.items() if k != "type"}
    return HEADS[spec["type"]](**arguments)
