"""The joint objective as one module, so DDP and FSDP see a forward pass.

DDP synchronises gradients only for computations that went through the wrapped module's
``forward``; the tasks call several model methods (encode, fuse, decode), so the loop wraps
model + joint loss in this module and hands it to Accelerate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from tuwen.data.batch import Batch
from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks.table import joint_step


class JointObjective(nn.Module):
    def __init__(self, model: ImageTextModel, options: Mapping[str, Any] | None = None,
                 gather: bool = False) -> None:
        super().__init__()
        self.model, self.gather = model, gather
        self.options = None if options is None else dict(options)  # None: the defaults

    def forward(self, batch: Batch, weights: dict[str, float]) -> tuple[torch.Tensor, dict]:
        return joint_step(self.model, batch, weights, self.options, gather=self.gather)
