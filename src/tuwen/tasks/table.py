"""The table of tasks: the one list of them, and what follows from it.

``TASKS`` maps each task's name to its ``Task`` (tasks.base). Adding a task is one module and
one line here (or, from outside the package, ``TASKS["name"] = MyTask()`` before loading a
config). Everything else reads this table: which names ``train.tasks``,
``train.task_schedule``, ``train.task_options`` and ``eval.tasks`` accept, the weights a run
resolves from its data, the heads a model gets, the parts of a batch, the joint loss, and the
evaluators.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from tuwen.config import Config, config_from_dict, load_config
from tuwen.data.batch import Batch
from tuwen.data.dataset import PartCollate, TextTools
from tuwen.data.prepare import SplitData, split_labels
from tuwen.errors import ConfigError, DataError
from tuwen.models.image_text_model import ImageTextModel
from tuwen.models.spec import ModelSpec
from tuwen.tasks.base import StepInputs, Task
from tuwen.tasks.captioning import CaptionTask
from tuwen.tasks.chat import ChatTask
from tuwen.tasks.classify import ClassifyTask
from tuwen.tasks.itc import ItcTask
from tuwen.tasks.itm import ItmTask
from tuwen.tasks.vqa import VqaTask

TASKS: dict[str, Task] = {"caption": CaptionTask(), "itc": ItcTask(), "itm": ItmTask(),
                          "vqa": VqaTask(), "classify": ClassifyTask(), "chat": ChatTask()}


# ---- configs ---------------------------------------------------------------------------

def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """``config.load_config`` with task names and options checked against the table."""
    return load_config(path, overrides, tasks=TASKS)


def checked(config: Config) -> Config:
    """``config`` validated against the table (a config built in Python was not)."""
    return config_from_dict(config.model_dump(mode="json"), "config", tasks=TASKS)


def task_options(config: Config) -> dict[str, Any]:
    """Every task's options, validated (``train.task_options``; defaults where unset)."""
    given = config.train.task_options
    try:
        return {name: task.options_from(given.get(name), f"train.task_options.{name}")
                for name, task in TASKS.items()}
    except ValueError as err:  # a config built in Python, never checked against the table
        raise ConfigError(str(err)) from None


def trained(labels: frozenset[str] | set[str], config: Config) -> dict[str, float]:
    """Every trainable task's weight on data with ``labels``: the config's, else 1 when the
    data has the task's labels and 0 when not."""
    return {name: config.train.tasks.get(name, float(task.labels in labels))
            for name, task in TASKS.items() if task.trains}


def with_train_tasks(config: Config, train: SplitData,
                     log: Callable[[str], object] = print) -> Config:
    """``config`` with ``train.tasks`` decided by the training split's labels (every task
    named); ``log`` says which tasks run and why a task left unset does not."""
    has = split_labels(train)
    for name, weight in config.train.tasks.items():
        if weight > 0 and TASKS[name].labels not in has:
            raise DataError(train.split, f"no {TASKS[name].labels} labels in this split, but "
                                         f"train.tasks weighs {name} (set its weight to 0)")
    weights = trained(has, config)
    running = {name: w for name, w in weights.items() if w > 0}
    if not running and not config.train.task_schedule:
        raise DataError(train.split, "no task to train: the tasks with a weight > 0 have no "
                                     "labels in this split")
    line = "training tasks: " + ", ".join(f"{name} (weight {w:g})" for name, w in running.items())
    could = config.data.provides()  # tasks no source could feed go unmentioned
    if off := [name for name in weights if name not in config.train.tasks
               and name not in running and TASKS[name].labels in could]:
        line += f"; not {', '.join(off)}: split {train.split!r} has no " + " or ".join(
            sorted({f"{TASKS[n].labels} labels" for n in off}))
    log(line)
    return config.model_copy(update={"train": config.train.model_copy(update={"tasks": weights})})


# ---- models and batches ----------------------------------------------------------------

def model_heads(spec: ModelSpec) -> dict[str, dict]:
    """The heads every task of the table adds, in table order (``ModelSpec.heads``)."""
    return {name: head for task in TASKS.values() for name, head in task.heads(spec).items()}


def part_collates(tools: TextTools, config: Config, spec: ModelSpec,
                  train: SplitData | None) -> dict[str, PartCollate]:
    """Each task's collate function for its part of a batch (``train``: the training
    records; None for validation batches)."""
    options = task_options(config)
    out = {}
    for name, task in TASKS.items():
        collate = task.collate(tools, options[name], spec, train)
        if collate is not None:
            out[name] = collate
    return out


def default_options() -> dict[str, Any]:
    """Every task's options at their defaults."""
    return {name: task.Options() for name, task in TASKS.items()}


def joint_step(model: ImageTextModel, batch: Batch, weights: Mapping[str, float],
               options: Mapping[str, Any] | None = None, *, gather: bool = False,
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One image pass feeds every task with a weight in ``weights``; returns the weighted
    total and each task's unweighted loss. ``options``: each task's (``task_options``;
    None: the defaults). With ``gather`` the contrastive negatives come from every process
    (see tasks.gather)."""
    options = default_options() if options is None else options
    active = {name: (task, options[name]) for name, task in TASKS.items() if name in weights}
    step = StepInputs(model, batch, gather, active)
    if batch.pixel_values is not None:  # None: text-only conversations
        step.image  # noqa: B018 -- the image pass comes first, whichever task asks for it
    losses = {name: loss for name, (task, opts) in active.items()
              if (loss := task.loss(step, opts)) is not None}
    if not losses:
        raise ValueError("the batch has no labels for any active task")
    total = sum(weights[name] * loss for name, loss in losses.items())
    return total, losses
