"""What the config layer knows of tasks: nothing but what validation is handed.

The table of tasks lives above the config (``tuwen.tasks.table``); a config cannot import it.
Validation receives it instead, as pydantic's validation context (``{"tasks": table}``):
task names in ``train.tasks``, ``train.task_schedule``, ``train.task_options`` and
``eval.tasks`` are then checked against it, and each task's options against the options
model the task declares. A config validated without a table (built in Python) is checked
again when a run starts (``tuwen.tasks.table.checked``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError, ValidationInfo

from tuwen.config.base import Section


class NoOptions(Section):
    """A task without options."""


class TaskDeclaration(Protocol):
    """The part of a task the config checks: its labels, its options, its evaluator."""

    name: str
    labels: str                  # the label kind it trains on: "caption", "vqa", "class"
    metric: str | None           # its section of metrics.json (eval.tasks), None: none
    Options: type[BaseModel]

    def options_from(self, raw: Any, where: str) -> BaseModel: ...


def task_catalog(info: ValidationInfo | None) -> Mapping[str, TaskDeclaration] | None:
    """The table of tasks handed to validation, or None."""
    context = info.context if info is not None else None
    return context.get("tasks") if isinstance(context, dict) else None


def check_task_names(catalog: Mapping[str, Any], where: str, names: Iterable[str]) -> None:
    unknown = [n for n in names if n not in catalog]
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown task (known: {', '.join(catalog)})")


def validated_options(options: type[BaseModel], raw: Any, where: str) -> BaseModel:
    """``raw`` as ``options``; an error names the first wrong key under ``where``."""
    try:
        return options.model_validate(raw or {})
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(p) for p in e["loc"])
        what = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        raise ValueError(f"{where}.{key}: {what}") from None
