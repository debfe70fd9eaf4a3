"""Gathering rows from every training process, gradients flowing back to the local rows.

Contrastive losses want the negatives of the global batch (open_clip's ``gather_with_grad``):
each process gathers every process's embeddings, computes the same global loss, and the
backward pass of ``torch.distributed.nn.functional.all_gather`` sums each process's gradient
for a shard back onto the process that owns it. DDP then averages over processes, which
leaves exactly the gradient of the global loss. Outside a multi-process run every function
here returns its input.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from tuwen.models.layers import pad_to


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def gather_sizes(n: int) -> list[int]:
    """Each process's ``n`` in rank order."""
    if world_size() == 1:
        return [n]
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([n]))
    return [int(s) for s in sizes]


def gather_rows(x: torch.Tensor, sizes: list[int] | None = None) -> list[torch.Tensor]:
    """Every process's ``x`` (first dimensions may differ), in rank order; differentiable
    for floating tensors. ``sizes`` are the row counts if already known."""
    if world_size() == 1:
        return [x]
    sizes = sizes or gather_sizes(x.shape[0])
    padded = pad_to(x, max(sizes), 0)
    if x.is_floating_point() and torch.is_grad_enabled():
        parts = dist_fn.all_gather(padded.contiguous())
    else:
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
    return [p[:n] for p, n in zip(parts, sizes)]


def gather_cat(x: torch.Tensor, sizes: list[int] | None = None, *, width_dim: int | None = None,
               pad_value: float = 0) -> torch.Tensor:
    """``gather_rows`` concatenated; with ``width_dim``, first pad that dimension (e.g. the
    token length of a text batch) to the widest process's size."""
    if world_size() == 1:
        return x
    if width_dim is not None:
        x = pad_to(x, max(gather_sizes(x.shape[width_dim])), width_dim, pad_value)
    return torch.cat(gather_rows(x, sizes))
