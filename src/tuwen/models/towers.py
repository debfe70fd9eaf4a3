"""What every image and text tower shares: a body that can be frozen or trained slower.

A tower's *body* is the part that ``freeze`` and ``lr_multiplier`` act on: the whole
module for the small towers, the Hugging Face model for ``hf`` towers (their projection to
``hidden_size`` is new, so it always trains at the base learning rate).
"""

from __future__ import annotations

from torch import nn

from tuwen.config import ModelConfig

TOWERS = ("image_encoder", "text_encoder")


class Tower(nn.Module):
    """Base class of the towers; ``body_name`` names the body's attribute ("" = itself)."""

    body_name = ""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = False

    def body(self) -> nn.Module:
        return getattr(self, self.body_name) if self.body_name else self

    def freeze(self) -> None:
        self.frozen = True
        self.body().requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> Tower:
        super().train(mode)
        if self.frozen:  # dropout off and BatchNorm statistics fixed, as the weights are
            nn.Module.train(self.body(), False)  # (not this override: the body may be self)
        return self


def lr_multipliers(model: nn.Module, config: ModelConfig) -> dict[str, float]:
    """Parameter-name prefix -> learning-rate multiplier, for the towers that have one."""
    out = {}
    for name in (*TOWERS, "decoder"):  # an hf_causal_lm decoder is a Tower too
        tower = getattr(model, name)
        multiplier = getattr(getattr(config, name), "lr_multiplier", 1.0)
        if multiplier != 1.0:
            body = f".{tower.body_name}" if tower.body_name else ""
            out[f"{name}{body}."] = multiplier
    return out
