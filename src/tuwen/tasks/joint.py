"""Joint training step: one image pass, every active task's losses, one weighted sum."""

from __future__ import annotations

import torch

from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks import captioning, retrieval, vqa


def joint_step(model: ImageTextModel, batch: dict, weights: dict[str, float],
               label_smoothing: float = 0.0, *, gather: bool = False,
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Returns the weighted total and each task's unweighted loss; with ``gather`` the
    contrastive negatives come from every process (see tasks.gather)."""
    image = model.encode_image(batch["pixel_values"])
    losses: dict[str, torch.Tensor] = {}
    if "caption" in weights:
        losses.update(captioning.training_step(model, batch, image, label_smoothing))
    if "itc" in weights or "itm" in weights:
        losses.update(retrieval.training_step(model, batch, image, itc="itc" in weights,
                                              itm="itm" in weights, gather=gather))
    if "vqa" in weights:
        losses.update(vqa.training_step(model, batch, image))
    if not losses:
        raise ValueError("the batch has no labels for any active task")
    total = sum(weights[name] * loss for name, loss in losses.items())
    return total, losses
