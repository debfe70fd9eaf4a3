"""One optimiser step: forward and backward over its micro-batches, clip, schedule, update."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field

from tuwen.config import TrainConfig
from tuwen.data.batch import Batch
from tuwen.tasks.table import TASKS
from tuwen.training.distributed import mean_over_ranks
from tuwen.training.grad_cache import accumulate_whole_batch, applies
from tuwen.training.grad_norms import task_gradient_norms
from tuwen.training.optim import task_weights
from tuwen.training.parts import Parts
from tuwen.training.precision import autocast
from tuwen.training.state import TrainState


@dataclass
class StepResult:
    total: float
    losses: dict[str, float]
    weights: dict[str, float]
    grad_norm: float | None
    samples: int
    lr: float
    task_grad_norms: dict[str, float] = field(default_factory=dict)


def accumulate_gradients(parts: Parts, micro_batches: list[Batch], weights: dict[str, float],
                         precision: str, measure_tasks: bool = False,
                         whole_batch_negatives: bool = True,
                         ) -> tuple[dict[str, float], int, dict[str, float]]:
    """Forward and backward over the micro-batches of one step; the gradient is that of the
    mean of their losses, synchronised across processes on the last one only. With
    ``whole_batch_negatives`` (and several micro-batches, ITC on) ITC and ITM take their
    negatives from all micro-batches (training.grad_cache). Returns the mean losses, the
    number of samples and, with ``measure_tasks``, each task's gradient norm (mean over
    processes)."""
    if applies(whole_batch_negatives, len(micro_batches), weights):
        return _over_ranks(*accumulate_whole_batch(parts, micro_batches, weights, precision,
                                                   measure_tasks), measure_tasks)
    accelerator, n = parts.accelerator, len(micro_batches)
    sums: dict[str, float] = defaultdict(float)
    norms: dict[str, float] = {}
    samples = 0
    for i, batch in enumerate(micro_batches):
        batch = batch.to(accelerator.device)
        sync = accelerator.no_sync(parts.objective) if i < n - 1 else contextlib.nullcontext()
        with sync:
            with autocast(precision, accelerator.device):
                total, losses = parts.objective(batch, weights)
            if measure_tasks and i == 0:
                trainable = [p for p in parts.objective.parameters() if p.requires_grad]
                norms = task_gradient_norms(losses, weights, trainable)
            accelerator.backward(total / n)
        sums["loss"] += total.item() / n
        for name, value in losses.items():
            sums[name] += value.item() / n
        samples += batch.size
    return _over_ranks(dict(sums), samples, norms, measure_tasks)


def _over_ranks(sums: dict[str, float], samples: int, norms: dict[str, float],
                measure_tasks: bool) -> tuple[dict[str, float], int, dict[str, float]]:
    """The losses (and measured norms) as means over processes (collectives)."""
    if measure_tasks:  # every rank measures on the same steps
        norms = mean_over_ranks(norms, tuple(f"grad_norm_{t}" for t in TASKS))
    return mean_over_ranks(sums, ("loss", *TASKS)), samples, norms


def optimisation_step(parts: Parts, micro_batches: list[Batch], tcfg: TrainConfig,
                      state: TrainState, started: float) -> StepResult:
    """One optimiser step over ``grad_accumulation`` micro-batches; advances ``state``."""
    weights = task_weights(state.step, tcfg)
    every = parts.task_grad_norm_every
    losses, samples, task_norms = accumulate_gradients(
        parts, micro_batches, weights, tcfg.precision,
        measure_tasks=every is not None and (state.step + 1) % every == 0,
        whole_batch_negatives=tcfg.whole_batch_negatives)
    grad_norm = (parts.accelerator.clip_grad_norm_(parts.objective.parameters(), tcfg.grad_clip)
                 if tcfg.grad_clip else None)
    state.elapsed_s = time.perf_counter() - started
    lr = parts.schedule.step(state.step, state.elapsed_s)
    parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.samples += samples
    total = losses.pop("loss")
    return StepResult(total, losses, weights if tcfg.task_schedule else {},
                      None if grad_norm is None else float(grad_norm), samples, lr, task_norms)
