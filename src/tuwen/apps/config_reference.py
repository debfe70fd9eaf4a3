"""``python -m tuwen.apps.config_reference``: docs/config-reference.md from the config models
and each task's options (the table of tasks); ``--check`` fails when the page is stale."""

from __future__ import annotations

import sys

from tuwen.config.reference import main
from tuwen.tasks.table import TASKS


def task_options() -> dict:
    return {name: task.Options for name, task in TASKS.items()}


if __name__ == "__main__":
    sys.exit(main(task_options=task_options()))
