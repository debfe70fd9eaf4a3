"""A small causal Transformer decoder that reads the image through cross-attention.

Generation runs it with a KV cache (``new_cache()``): each step feeds only the new tokens,
the self-attention keys/values of earlier positions are kept per layer, and the image's
cross-attention keys/values are projected once.

Training calls ``loss`` (both this decoder and ``hf_decoder.HFCausalLMDecoder`` have it):
the LM head runs only where a label is set. Sequences of several tasks share one forward,
with one loss per task, where the decoder ``packs``: one row per image (``pack_by_image``,
then ``packed_loss``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tuwen.models.layers import Block, LayerCache, causal_bias, padding_bias
from tuwen.models.losses import caption_loss, head_cross_entropy

IGNORE = -100  # the label of a position without a loss (prompt, image, padding)


@dataclass
class DecoderOutput:
    logits: torch.Tensor | None                      # (B, L, V); None when a loss was asked
    cross_attentions: tuple[torch.Tensor, ...] | None  # per layer (B, H, L, N_img)
    loss: torch.Tensor | None = None                 # () or per row group (G,), given labels


@dataclass
class DecoderCache:
    """Per-layer keys/values and how many positions they hold."""

    layers: list[LayerCache]
    length: int = 0

    def reorder(self, index: torch.Tensor) -> None:
        for layer in self.layers:
            layer.reorder(index)


@dataclass
class PackedRows:
    """Several tasks' sequences packed one row per image: each image's sequences back to
    back, behind one copy of the image (``pack_by_image``)."""

    input_ids: torch.Tensor  # (P, T) the sequences of one image, back to back; right-padded
    labels: torch.Tensor     # (P, T) their labels; IGNORE on padding
    group: torch.Tensor      # (P, T) the row group (task) of each token; -1 on padding
    segment: torch.Tensor    # (P, T) which sequence of its row a token is in; -1 on padding
    positions: torch.Tensor  # (P, T) each token's position within its own sequence
    image: torch.Tensor      # (P,) the image each packed row reads

    def group_labels(self, group: int) -> torch.Tensor:
        """The labels of ``group``'s tokens only (P, T)."""
        return self.labels.masked_fill(self.group != group, IGNORE)

    def attends(self, prefix: int = 0) -> torch.Tensor:
        """(P, 1, N + T, N + T) bool, behind an image prefix of N positions: a token sees the
        whole prefix and the earlier tokens of its own sequence (padding sees padding),
        never another sequence's; the prefix is causal within itself."""
        same = self.segment[:, :, None] == self.segment[:, None, :]  # (P, T, T)
        rows, total = len(same), prefix + same.shape[1]
        allowed = torch.ones(total, total, dtype=torch.bool, device=same.device).tril()
        allowed = allowed.repeat(rows, 1, 1)  # (P, N + T, N + T)
        allowed[:, prefix:, prefix:] &= same
        return allowed[:, None]


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention mask as an additive bias: 0 where allowed, the dtype's minimum
    elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)


def pack_by_image(sequences: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                  pad_token_id: int) -> PackedRows:
    """Several tasks' right-padded ``(input_ids, labels, image)`` (B_i, L_i), (B_i,) packed
    one row per image. A sequence keeps its tokens up to its last label (what follows
    carries no loss and, the decoder being causal, changes none); a sequence without a
    label is dropped."""
    rows: dict[int, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
    for group, (ids, labels, image) in enumerate(sequences):
        has = labels != IGNORE  # (B_i, L_i)
        lengths = torch.where(has.any(1), has.shape[1] - has.flip(1).int().argmax(1), 0)
        for r, (n, img) in enumerate(zip(lengths.tolist(), image.tolist())):
            if n:
                rows.setdefault(img, []).append((group, ids[r, :n], labels[r, :n]))
    images, device = sorted(rows), sequences[0][0].device
    width = max(sum(len(ids) for _, ids, _ in rows[i]) for i in images) if images else 0
    packed = [torch.full((len(images), width), fill, dtype=torch.long, device=device)
              for fill in (pad_token_id, IGNORE, -1, -1, 0)]
    for p, img in enumerate(images):
        start = 0
        for s, (group, ids, labels) in enumerate(rows[img]):
            span = slice(start, start + len(ids))
            count = torch.arange(len(ids), device=device)
            for out, value in zip(packed, (ids, labels, group, s, count)):
                out[p, span] = value
            start += len(ids)
    return PackedRows(*packed, torch.tensor(images, dtype=torch.long, device=device))


def labelled_loss(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Linear | None,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of ``head`` over the final hidden states (B, L, D) at the positions
    whose label (B, L) is set: their mean (). ``head=None``: ``hidden`` are the logits
    already."""
    keep = labels != IGNORE  # (B, L)
    if head is None:
        return caption_loss(hidden[keep][None], labels[keep][None], label_smoothing)
    return head_cross_entropy(hidden[keep], head.weight, labels[keep], head.bias,
                              label_smoothing)


def positions_from_mask(attention_mask: torch.Tensor, new: int) -> torch.Tensor:
    """(B, T) 1/0 mask over all positions -> (B, new) position ids of the last ``new``:
    left padding takes no positions, so a padded prompt is numbered as if unpadded."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)[:, -new:]


class CaptionDecoder(nn.Module):
    packs = True  # several sequences of one image can share a row (packed_loss)

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
                cache: DecoderCache | None = None, labels: torch.Tensor | None = None,
                label_smoothing: float = 0.0) -> DecoderOutput:
        """``attention_mask`` covers the cached and the new positions (B, past + L); with a
        ``cache``, ``input_ids`` are only the new tokens. With ``labels`` the output is the
        ``loss`` (``labelled_loss``), and no logits."""
        x, weights = self._hidden(input_ids, image_tokens, attention_mask, output_attentions,
                                  cache)
        attentions = tuple(weights) if output_attentions else None
        if labels is not None:
            return DecoderOutput(None, attentions, labelled_loss(
                x, labels, self.lm_head, label_smoothing))
        return DecoderOutput(logits=self.lm_head(x), cross_attentions=attentions)

    def loss(self, input_ids: torch.Tensor, image_tokens: torch.Tensor, labels: torch.Tensor,
             attention_mask: torch.Tensor | None = None, *,
             label_smoothing: float = 0.0) -> torch.Tensor:
        """Teacher-forced cross-entropy of ``labels`` (B, L; ``IGNORE`` where no loss), the
        head computed only where a label is set."""
        return self(input_ids, image_tokens, attention_mask, labels=labels,
                    label_smoothing=label_smoothing).loss

    def packed_loss(self, packed: PackedRows, image_tokens: torch.Tensor,
                    label_smoothing: Sequence[float]) -> torch.Tensor:
        """One loss per row group (G,) of several tasks' sequences packed one row per image
        (``pack_by_image``; ``image_tokens`` (P, N, D), each packed row's cross-attention
        memory). Each sequence sees only its own earlier tokens, at the positions it has
        alone, so its loss is that of its own forward."""
        x = self.drop(self.embed(packed.input_ids) + self.pos[0, packed.positions])  # (P, T, D)
        bias = additive_mask(packed.attends(), x.dtype)  # (P, 1, T, T)
        for block in self.blocks:
            x, _ = block(x, bias=bias, context=image_tokens)
        x = self.norm(x)
        return torch.stack([labelled_loss(x, packed.group_labels(g), self.lm_head, eps)
                            for g, eps in enumerate(label_smoothing)])

    def _hidden(self, input_ids: torch.Tensor, image_tokens: torch.Tensor,
                attention_mask: torch.Tensor | None, output_attentions: bool,
                cache: DecoderCache | None) -> tuple[torch.Tensor, list]:
        """The final normalised hidden states (B, L, D) and each layer's attention."""
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
        return self.norm(x), weights
