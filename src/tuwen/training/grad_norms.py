"""Per-task gradient norms: how hard each objective pulls on the shared weights.

The joint loss is a weighted sum, so its gradient hides which task dominates. Every
``train.task_grad_norm_every`` steps the loop measures, before the real backward, the L2
norm of each task's weighted gradient ``w_t * dL_t/dθ`` over all trainable parameters (one
extra backward per task through the kept graph). A task whose norm is 10x the others' sets
the direction of every shared layer; that is the number to balance ``train.tasks`` by.
"""

from __future__ import annotations

import torch


def task_gradient_norms(losses: dict[str, torch.Tensor], weights: dict[str, float],
                        params: list[torch.Tensor]) -> dict[str, float]:
    """``{"grad_norm_<task>": ||w_t * dL_t/dθ||}`` for each loss that has a gradient.

    The graph is kept for the backward that follows; no ``.grad`` is touched, so the
    optimiser step is the same with or without this measurement.
    """
    norms = {}
    for name, loss in losses.items():
        if not loss.requires_grad:
            continue
        grads = torch.autograd.grad(weights.get(name, 0.0) * loss, params, retain_graph=True,
                                    allow_unused=True)
        squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
        norms[f"grad_norm_{name}"] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    return norms
