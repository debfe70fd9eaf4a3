"""Gradient accumulation with the whole batch's negatives (GradCache, Gao et al. 2021).

Accumulating K micro-batches gives the gradient of one batch K times larger for per-sample
losses, but ITC's InfoNCE and ITM's hard negatives couple a batch's samples: micro-batch by
micro-batch they see B candidates instead of K x B. With ``train.whole_batch_negatives``
(the default when ITC trains and K > 1) a step runs in three phases:

1. embed: each micro-batch's towers without a graph (``tasks.whole_batch.encode_towers``),
   after keeping the RNG state it starts from;
2. whole batch: on the towers' outputs as leaves, ITC over every micro-batch's (and
   process's) embeddings, then ITM micro-batch by micro-batch with hard negatives mined
   from the whole batch (one micro-batch's fusion activations at a time); their backward
   fills the heads' gradients and leaves a gradient on every tower output;
3. re-run: each micro-batch's towers again with a graph, under the RNG state kept for it
   (the same dropout, so the same outputs), the per-sample losses (caption, VQA, ...) on
   top, and one backward of their mean plus the cached gradients dotted with the outputs.

The RNG is one stream: the embed passes draw from it micro-batch after micro-batch, the
whole-batch phase (ITM's sampling, the fusion's dropout) and the re-runs' per-sample losses
continue it; a re-run replays only its towers' share. Every phase is a forward pass of the
wrapped objective, all but the last re-run under ``no_sync``: DDP averages on the last
backward what every phase accumulated (the heads of ITC and ITM included, which only the
whole-batch phase uses; tests/training/test_grad_cache.py checks it on two processes).

The cost: the towers run twice, and every micro-batch's tower outputs (and their gradients)
are held without a graph. Measured: docs/training.md#gradient-accumulation.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from tuwen.data.batch import Batch
from tuwen.tasks.base import StepInputs
from tuwen.tasks.table import TASKS
from tuwen.tasks.whole_batch import TASK_KEYS, WholeBatch, as_leaves, encode_towers, interface
from tuwen.training.grad_norms import task_gradient_norms
from tuwen.training.parts import Parts
from tuwen.training.precision import autocast


def applies(whole_batch_negatives: bool, micro_batches: int, weights: dict[str, float]) -> bool:
    """Whether a step accumulates with the whole batch's negatives: switched on, several
    micro-batches, and ITC training at this step."""
    return whole_batch_negatives and micro_batches > 1 and weights.get("itc", 0.0) > 0


@dataclass
class RngState:
    """The CPU generator's state, and the current GPU's when the step runs on one."""

    cpu: torch.Tensor
    cuda: torch.Tensor | None

    @classmethod
    def now(cls, device: torch.device) -> RngState:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), cuda)

    def restore(self, device: torch.device) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, device)


@contextlib.contextmanager
def replaying(state: RngState, device: torch.device) -> Iterator[None]:
    """The block draws from ``state``; afterwards the RNG is back where it was."""
    main = RngState.now(device)
    state.restore(device)
    try:
        yield
    finally:
        main.restore(device)


@contextlib.contextmanager
def batch_statistics_kept(model: nn.Module) -> Iterator[None]:
    """BatchNorm running statistics as they were before the block: the embed pass must not
    count a micro-batch that its re-run counts again."""
    buffers = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               for b in m.buffers(recurse=False)]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        for b, s in zip(buffers, saved):
            b.copy_(s)


@dataclass
class Accumulated:
    """What a step's phases add up: losses (already divided into their step means), and on
    measuring steps each task's gradient norm or gradient."""

    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    norms: dict[str, float] = field(default_factory=dict)
    grads: dict[str, list] = field(default_factory=dict)  # whole-batch task -> summed grads

    def add_grads(self, task: str, grads: tuple) -> None:
        held = self.grads.setdefault(task, [None] * len(grads))
        for i, g in enumerate(grads):
            if g is not None:
                held[i] = g.detach().float() if held[i] is None else held[i] + g.detach()

    def finish_norms(self) -> dict[str, float]:
        for task, grads in self.grads.items():
            squares = [g.pow(2).sum() for g in grads if g is not None]
            self.norms[f"grad_norm_{task}"] = float(torch.stack(squares).sum().sqrt()) \
                if squares else 0.0
        return self.norms


def accumulate_whole_batch(parts: Parts, micro_batches: list[Batch], weights: dict[str, float],
                           precision: str, measure_tasks: bool = False,
                           ) -> tuple[dict[str, float], int, dict[str, float]]:
    """``step.accumulate_gradients`` with ITC's and ITM's negatives drawn from every
    micro-batch: the three phases above. Returns this process's mean losses, its number of
    samples and, with ``measure_tasks``, each task's gradient norm (per-sample tasks on the
    first micro-batch, as without this; whole-batch tasks over the step)."""
    device = parts.accelerator.device
    batches = [b.to(device) for b in micro_batches]
    itm = "itm" in weights
    acc = Accumulated()
    trainable = [p for p in parts.objective.parameters() if p.requires_grad] \
        if measure_tasks else []
    with parts.accelerator.no_sync(parts.objective):
        states, leaves = zip(*(_embed(parts, b, itm, precision) for b in batches))
        whole = _whole_batch(parts, batches, list(leaves), weights, precision, acc, trainable)
    for i, (batch, state) in enumerate(zip(batches, states)):
        last = i == len(batches) - 1
        sync = contextlib.nullcontext() if last else parts.accelerator.no_sync(parts.objective)
        with sync:
            _rerun(parts, Rerun(batch, state, whole, i, len(batches), itm), weights,
                   precision, acc, trainable)
    return dict(acc.sums), sum(b.size for b in batches), acc.finish_norms()


def _embed(parts: Parts, batch: Batch, itm: bool,
           precision: str) -> tuple[RngState, dict[str, torch.Tensor]]:
    """Phase 1 for one micro-batch: the RNG state it starts from, and its interface tensors
    as leaves."""
    state = RngState.now(parts.accelerator.device)

    def phase(objective) -> dict[str, torch.Tensor]:
        with batch_statistics_kept(objective.model):
            return interface(encode_towers(objective.model, batch, itm), batch, itm)

    with torch.no_grad(), autocast(precision, parts.accelerator.device):
        return state, as_leaves(parts.objective(batch, None, phase=phase))


def _whole_batch(parts: Parts, batches: list[Batch], leaves: list[dict], weights: dict[str, float],
                 precision: str, acc: Accumulated, trainable: list) -> WholeBatch | None:
    """Phase 2: ITC over the whole batch, then ITM micro-batch by micro-batch; each loss's
    backward leaves its gradient on the leaves (and the heads' weights)."""
    device, n = parts.accelerator.device, len(batches)

    def itc_phase(objective) -> tuple[WholeBatch, torch.Tensor | None]:
        whole = WholeBatch(objective.model, batches, leaves, objective.gather)
        return whole, whole.itc_loss(objective.model) if whole.has_negatives else None

    with autocast(precision, device):
        whole, loss = parts.objective(None, None, phase=itc_phase)
    if loss is None:
        return None
    _backward(parts, "itc", weights["itc"] * loss, loss, acc, trainable)
    if "itm" not in weights:
        return whole
    whole.mine()
    for part in whole.parts:
        def itm_phase(objective, part=part) -> torch.Tensor:
            return whole.itm_loss(objective.model, part)

        with autocast(precision, device):
            loss = parts.objective(None, None, phase=itm_phase)
        _backward(parts, "itm", weights["itm"] * loss / n, loss / n, acc, trainable)
    whole.itm_gradients()
    return whole


def _backward(parts: Parts, task: str, weighted: torch.Tensor, logged: torch.Tensor,
              acc: Accumulated, trainable: list) -> None:
    if trainable:  # a measuring step: this loss's share of the task's gradient
        acc.add_grads(task, torch.autograd.grad(weighted, trainable, retain_graph=True,
                                                allow_unused=True))
    parts.accelerator.backward(weighted)
    acc.sums[task] += logged.item()
    acc.sums["loss"] += weighted.item()


@dataclass
class Rerun:
    """Phase 3's inputs for one micro-batch."""

    batch: Batch
    state: RngState
    whole: WholeBatch | None
    index: int
    count: int
    itm: bool  # ITM trains


def _rerun(parts: Parts, run: Rerun, weights: dict[str, float], precision: str,
           acc: Accumulated, trainable: list) -> None:
    """Phase 3 for one micro-batch: towers replayed, per-sample losses, one backward."""
    device = parts.accelerator.device
    per_sample = {name: w for name, w in weights.items() if not TASKS[name].whole_batch}
    part = None if run.whole is None else \
        next((p for p in run.whole.parts if p.batch is run.batch), None)
    scale = parts.accelerator.scaler.get_scale() if parts.accelerator.scaler is not None else 1.0

    def phase(objective) -> tuple[torch.Tensor, dict, dict[str, torch.Tensor]]:
        model = objective.model
        with replaying(run.state, device):
            out = encode_towers(model, run.batch, run.itm)
        options = objective.task_options
        active = {name: (task, options[name]) for name, task in TASKS.items()
                  if name in per_sample}  # the generative ones share one LM forward
        step = StepInputs(model, run.batch, objective.gather, active, image=out.image)
        losses = {name: loss for name, (task, opts) in active.items()
                  if (loss := task.loss(step, opts)) is not None}
        total = sum((per_sample[k] * v for k, v in losses.items()), out.image.pooled.new_zeros(()))
        pulls = {} if part is None else \
            _pulls(interface(out, run.batch, run.itm), run.whole.cached_gradients(part, scale))
        return total, losses, pulls

    with autocast(precision, device):
        total, losses, pulls = parts.objective(run.batch, None, phase=phase)
    if trainable:
        _measure(losses, pulls, per_sample, run.index, acc, trainable)
    parts.accelerator.backward(total / run.count + sum(pulls.values()))
    acc.sums["loss"] += total.item() / run.count
    for name, value in losses.items():
        acc.sums[name] += value.item() / run.count


def _pulls(tensors: dict[str, torch.Tensor],
           grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per whole-batch task, a scalar whose gradient with respect to each interface tensor is
    the gradient cached for it."""
    out = {}
    for task, keys in TASK_KEYS.items():
        terms = [(tensors[k] * grads[k].to(tensors[k].dtype)).sum() for k in keys
                 if k in grads and tensors[k].requires_grad]
        if terms:
            out[task] = sum(terms)
    return out


def _measure(losses: dict, pulls: dict, weights: dict[str, float], index: int,
             acc: Accumulated, trainable: list) -> None:
    """Per-sample tasks: their norm on the first micro-batch; whole-batch tasks: this
    micro-batch's share of their gradient through the towers."""
    if index == 0:
        acc.norms.update(task_gradient_norms(losses, weights, trainable))
    for task, pull in pulls.items():
        acc.add_grads(task, torch.autograd.grad(pull, trainable, retain_graph=True,
                                                allow_unused=True))
