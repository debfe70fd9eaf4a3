"""The joint objective as one module, so DDP and FSDP see a forward pass.

DDP synchronises gradients only for computations that went through the wrapped module's
``forward``; the tasks call several model methods (encode, fuse, decode), so the loop wraps
model + joint loss in this module and hands it to Accelerate.
"""

from __future__ import annotations

import torch
from torch import nn

from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks.joint import joint_step


class JointObjective(nn.Module):
    def __init__(self, model: ImageTextModel, label_smoothing: float = 0.0,
                 gather: bool = False) -> None:
        super().__init__()
        self.model, self.label_smoothing, self.gather = model, label_smoothing, gather

    def forward(self, batch: dict, weights: dict[str, float]) -> tuple[torch.Tensor, dict]:
        return joint_step(self.model, batch, weights, self.label_smoothing, gather=self.gather)
