"""AdamW with the usual no-decay groups, the learning-rate schedule and the task-weight schedule.

The learning rate is a linear warmup then ``train.schedule`` (cosine, linear or constant)
as a function of *progress*, the larger of steps done / max_steps and time spent / time
budget, so a run stopped by a wall-clock budget still ends its decay. Both schedules are
pure functions of the step and the elapsed time, which checkpoints hold, so a resumed run
continues them exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tuwen.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig,
                    lr_multipliers: dict[str, float] | None = None) -> torch.optim.AdamW:
    groups = param_groups(model, cfg, lr_multipliers or {})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=can_fuse(groups))


def can_fuse(groups: list[dict]) -> bool:
    """The fused AdamW kernel (one pass over all parameters instead of a Python loop over
    them; benchmarks/NOTES.md) takes floating-point parameters on CPU or CUDA."""
    params = [p for group in groups for p in group["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                                for p in params)


def param_groups(model: nn.Module, cfg: TrainConfig,
                 lr_multipliers: dict[str, float]) -> list[dict]:
    """Decay and no-decay groups, split by learning-rate multiplier (parameter-name prefix ->
    multiplier, e.g. a tower's; the longest matching prefix wins). Frozen parameters are
    left out; each group's ``lr`` is ``cfg.lr`` times its multiplier."""
    groups: dict[tuple[bool, float], list] = {(True, 1.0): [], (False, 1.0): []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # Norms, biases, embeddings, position tables and the temperature are not decayed.
        decay = not (param.ndim < 2 or "embed" in name or name.endswith(("pos", "cls")))
        prefixes = [prefix for prefix in lr_multipliers if name.startswith(prefix)]
        multiplier = lr_multipliers[max(prefixes, key=len)] if prefixes else 1.0
        groups.setdefault((decay, multiplier), []).append(param)
    return [{"params": params, "weight_decay": cfg.weight_decay if decay else 0.0,
             "lr": cfg.lr * multiplier, "lr_multiplier": multiplier}
            for (decay, multiplier), params in groups.items()]


def progress(step: int, elapsed_s: float, cfg: TrainConfig) -> float:
    done = step / cfg.max_steps
    if cfg.max_minutes is not None:
        done = max(done, elapsed_s / (60 * cfg.max_minutes))
    return min(done, 1.0)


def lr_factor(step: int, fraction_done: float, cfg: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps``, then ``cfg.schedule`` from 1 to ``min_lr_ratio``."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    decay = {"cosine": 0.5 * (1 + math.cos(math.pi * fraction_done)),
             "linear": 1.0 - fraction_done, "constant": 1.0}[cfg.schedule]
    return warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay)


class LRSchedule:
    """Sets each parameter group's lr to its initial lr (which may carry a per-group
    multiplier) times ``lr_factor``; ``state_dict`` records where the schedule stands.

    ``restart`` begins it again at a later step and time with another config (a stage of
    ``train.stages``: its own lr, warmup and budget)."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
        self.optimizer, self.cfg, self.factor = optimizer, cfg, 0.0
        self.start_step, self.start_s, self.scale = 0, 0.0, 1.0
        self.base_lr = cfg.lr  # the lr the groups' initial lr were made from
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def restart(self, cfg: TrainConfig, step: int, elapsed_s: float) -> None:
        self.cfg, self.start_step, self.start_s = cfg, step, elapsed_s
        self.scale = cfg.lr / self.base_lr

    def step(self, step: int, elapsed_s: float) -> float:
        """Set the lr for optimiser step ``step``; returns the base lr (``train.lr`` scaled)."""
        step, elapsed_s = step - self.start_step, elapsed_s - self.start_s
        self.factor = lr_factor(step, progress(step, elapsed_s, self.cfg), self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self.scale * self.factor
        return self.cfg.lr * self.factor

    def state_dict(self) -> dict:
        cfg = self.cfg
        return {"schedule": cfg.schedule, "warmup_steps": cfg.warmup_steps,
                "max_steps": cfg.max_steps, "max_minutes": cfg.max_minutes,
                "min_lr_ratio": cfg.min_lr_ratio, "factor": self.factor}

    def load_state_dict(self, state: dict) -> None:
        self.factor = state["factor"]


def task_weights(step: int, cfg: TrainConfig) -> dict[str, float]:
    """The task loss weights at ``step``: ``train.tasks``, except where ``train.task_schedule``
    names a task; it is interpolated linearly between its points and held after the last.
    Tasks with weight 0 at this step are left out (not computed)."""
    weights = dict(cfg.tasks)  # the run has resolved every task's weight from its data
    for name in {n for p in cfg.task_schedule for n in p.weights}:
        points = [(p.step, p.weights[name]) for p in cfg.task_schedule if name in p.weights]
        weights[name] = _interpolate(step, points)
    return {name: w for name, w in weights.items() if w > 0}


def _interpolate(step: int, points: list[tuple[int, float]]) -> float:
    if step <= points[0][0]:
        return points[0][1]
    for (s0, w0), (s1, w1) in zip(points, points[1:]):
        if step <= s1:
            return w0 + (w1 - w0) * (step - s0) / (s1 - s0)
    return points[-1][1]
