"""Running a text tower on groups of similar length, to skip most of the padding.

A batch is padded to its longest text, so with texts of mixed lengths much of the text
encoder's and the ITM fusion's work is on padding (measured in
docs/experiments/2026-11-28-speed-attempts.md). Sorting the rows
by length and running the tower on ``buckets`` groups, each cut to its own longest row,
skips most of it. Real positions get the same values (a masked key contributes nothing);
padded positions, which nothing reads, hold the tower's output or zeros. Only right-padded
masks are bucketed; anything else runs as one group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tuwen.models.layers import pad_to


@dataclass
class Groups:
    rows: list[torch.Tensor]    # row indexes of each group, shortest texts first
    widths: list[int]           # each group's longest text
    inverse: torch.Tensor       # position of each original row in cat(rows)
    width: int                  # the batch's padded length


def length_groups(attention_mask: torch.Tensor, buckets: int) -> Groups | None:
    """Rows sorted by real length, cut into ``buckets`` groups of (nearly) equal size; None
    when bucketing would not help (one bucket, few rows, left padding, or no padding)."""
    n, width = attention_mask.shape
    if buckets < 2 or n < 2 * buckets or width < 2:
        return None
    mask = attention_mask.bool()
    if bool((mask[:, 1:] & ~mask[:, :-1]).any()):  # a real token after padding
        return None
    lengths = mask.sum(dim=1)
    if int(lengths.min()) == width:
        return None
    order = torch.argsort(lengths, stable=True)
    rows = list(torch.tensor_split(order, buckets))
    widths = [max(1, int(lengths[r].max())) for r in rows]
    return Groups(rows=rows, widths=widths, inverse=torch.argsort(order), width=width)


def merge(parts: list[torch.Tensor], groups: Groups, padded: bool) -> torch.Tensor:
    """Per-group outputs back in the original row order; ``padded`` ones (B, L_group, ...)
    are first zero-padded to the batch's width."""
    if padded:
        parts = [pad_to(p, groups.width, 1) for p in parts]
    return torch.cat(parts)[groups.inverse.to(parts[0].device)]


def run_grouped(fn: Callable[..., list[torch.Tensor]], groups: Groups,
                row_inputs: list[torch.Tensor], padded_inputs: list[torch.Tensor],
                padded_outputs: list[bool]) -> list[torch.Tensor]:
    """``fn(*row_inputs, *padded_inputs)`` on each group; ``padded_inputs`` (B, L, ...) are
    cut to the group's width, ``row_inputs`` (B, ...) are only indexed. ``fn`` returns a
    list of tensors (the same number for every group); ``padded_outputs[i]`` says whether
    the i-th has a length dimension to re-pad."""
    outputs = []
    for rows, w in zip(groups.rows, groups.widths):
        rows = rows.to(padded_inputs[0].device)
        outputs.append(fn(*[x[rows] for x in row_inputs],
                          *[x[rows][:, :w] for x in padded_inputs]))
    return [merge([out[i] for out in outputs], groups, padded_outputs[i])
            for i in range(len(outputs[0]))]
