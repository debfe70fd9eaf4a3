"""Losses as plain functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

# Logits per chunk of ``head_cross_entropy`` (rows x vocabulary): 64 MB in float32, so a
# 49,152-wide head (SmolLM2) takes 341 rows at a time and the logits of a long batch never
# exist all at once.
CHUNK_LOGITS = 2 ** 24


def caption_loss(logits: torch.Tensor, labels: torch.Tensor,
                 label_smoothing: float = 0.0) -> torch.Tensor:
    """Token-level cross-entropy; positions labelled -100 are ignored."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                           label_smoothing=label_smoothing)


def head_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                       bias: torch.Tensor | None = None, label_smoothing: float = 0.0,
                       chunk_logits: int = CHUNK_LOGITS) -> torch.Tensor:
    """Mean cross-entropy of the LM head ``hidden @ weight.T + bias`` against ``targets``,
    for the positions that carry a loss only: ``hidden`` (N, D), ``targets`` (N,).

    Equal to ``caption_loss`` on the full logits at those positions. Rows go through the
    head in chunks of ``chunk_logits // vocabulary`` rows; with more than one chunk each is
    recomputed in the backward pass instead of keeping its logits (the memory of one chunk,
    the cost of a second head matmul)."""
    if len(targets) == 0:  # nothing to predict: a zero that still reaches the parameters
        return hidden.sum() * 0.0
    rows = max(1, chunk_logits // weight.shape[0])
    if len(targets) <= rows:
        return _summed_ce(hidden, targets, weight, bias, label_smoothing) / len(targets)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(targets), rows):
        part = slice(start, start + rows)
        total = total + torch.utils.checkpoint.checkpoint(
            _summed_ce, hidden[part], targets[part], weight, bias, label_smoothing,
            use_reentrant=False)
    return total / len(targets)


def _summed_ce(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor | None, label_smoothing: float) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()  # (n, V)
    return F.cross_entropy(logits, targets, reduction="sum", label_smoothing=label_smoothing)


def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                     scale: torch.Tensor, positives: torch.Tensor | None = None,
                     text_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over the batch.

    ``positives`` (B_img, B_txt) marks every matching pair; the target distribution is
    uniform over them. Without it, pair i matches only i (CLIP). Synthetic and real
    datasets repeat captions ("a red circle"), and such duplicates are not negatives.

    ``text_weights`` (B_txt,) weigh the image-to-text targets: an image's target is spread
    over its positives in proportion to them instead of uniformly.
    """
    logits = scale * image_embeds.float() @ text_embeds.float().t()  # (B_img, B_txt)
    if positives is None:
        positives = torch.eye(logits.shape[0], logits.shape[1], device=logits.device)
    positives = positives.float()
    i2t_log_probs = logits.log_softmax(dim=1)
    i2t_targets = positives if text_weights is None else positives * text_weights.float()[None, :]
    i2t = -(i2t_targets * i2t_log_probs).sum(1) / i2t_targets.sum(1)
    t2i = -(positives * logits.log_softmax(dim=0)).sum(0) / positives.sum(0)
    return (i2t.mean() + t2i.mean()) / 2


def matching_loss(logits: torch.Tensor, is_match: torch.Tensor) -> torch.Tensor:
    """Binary image-text matching as 2-way cross-entropy."""
    return F.cross_entropy(logits.float(), is_match.long())


def soft_answer_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE against VQAv2 soft scores, summed over answers and averaged over questions."""
    per_answer = F.binary_cross_entropy_with_logits(logits.float(), targets.float(),
                                                    reduction="none")
    return per_answer.sum(dim=1).mean()


def sample_hard_negatives(similarity: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """For each row, draw a column in proportion to softmax(similarity), never a positive.

    Rows whose every column is a positive have no negative; they get -1.
    """
    weights = similarity.float().softmax(dim=1).masked_fill(positives.bool(), 0.0)
    has_negative = weights.sum(dim=1) > 0
    weights = torch.where(has_negative[:, None], weights, torch.ones_like(weights))
    picks = torch.multinomial(weights, 1).squeeze(1)
    return torch.where(has_negative, picks, torch.full_like(picks, -1))
