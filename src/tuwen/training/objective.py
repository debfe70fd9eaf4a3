"""The joint objective as one module, so DDP and FSDP see a forward pass.

DDP synchronises gradients only for computations that went through the wrapped module's
``forward``; the tasks call several model methods (encode, fuse, decode), so the loop wraps
model + joint loss in this module and hands it to Accelerate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from tuwen.data.batch import Batch
from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks.table import default_options, joint_step


class JointObjective(nn.Module):
    def __init__(self, model: ImageTextModel, options: Mapping[str, Any] | None = None,
                 gather: bool = False) -> None:
        super().__init__()
        self.model, self.gather = model, gather
        self.options = None if options is None else dict(options)  # None: the defaults

    @property
    def task_options(self) -> dict[str, Any]:
        return default_options() if self.options is None else self.options

    def forward(self, batch: Batch | None, weights: dict[str, float] | None,
                phase: Callable[[JointObjective], Any] | None = None) -> Any:
        """The joint step; or, with ``phase``, ``phase(self)`` in its place: the phases of
        accumulation with the whole batch's negatives (training.grad_cache) are forward
        passes too, so that DDP and FSDP see every use of the weights."""
        if phase is not None:
            return phase(self)
        return joint_step(self.model, batch, weights, self.options, gather=self.gather)
