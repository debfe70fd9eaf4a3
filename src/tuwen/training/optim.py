"""AdamW with the usual no-decay groups, and a warmup + cosine learning-rate schedule.

The schedule is a function of *progress*, the larger of steps done / max_steps and
time spent / time budget, so a run stopped by a wall-clock budget still ends its cosine.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tuwen.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # Norms, biases, embeddings, position tables and the temperature are not decayed.
        if param.ndim < 2 or "embed" in name or name.endswith(("pos", "cls")):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def progress(step: int, elapsed_s: float, cfg: TrainConfig) -> float:
    done = step / cfg.max_steps
    if cfg.max_minutes is not None:
        done = max(done, elapsed_s / (60 * cfg.max_minutes))
    return min(done, 1.0)


def lr_factor(step: int, fraction_done: float, cfg: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps``, then cosine from 1 to ``min_lr_ratio``."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    cosine = 0.5 * (1 + math.cos(math.pi * fraction_done))
    return warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
