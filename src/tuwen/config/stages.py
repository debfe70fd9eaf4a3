"""``train.stages``: a training recipe in stages (docs/training.md, "Stages").

Each stage has its own budget, the parts of the model that train in it, its task weights and
its learning rate; the learning-rate schedule (warmup, then decay) restarts at each stage.
LLaVA's recipe is two stages: the projector aligned with the LM frozen, then everything
(or the LM's LoRA adapters) tuned.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from tuwen.config.base import Section

# What a stage can name in ``trainable`` (training.stages.PART_PREFIXES says which
# parameters each is)
PartName = Literal["image_encoder", "text_encoder", "fusion", "decoder", "projector", "lora",
                   "heads"]


class StageConfig(Section):
    """One stage of ``train.stages``."""

    name: str | None = Field(None, description="A name for logs and the plan (default: its "
                                               "number).")
    max_steps: int | None = Field(None, ge=1, description=(
        "Optimiser steps of this stage; with `max_minutes` too, whichever comes first."))
    max_minutes: float | None = Field(None, gt=0, description=(
        "Wall-clock minutes of this stage; with `max_steps` too, whichever comes first."))
    trainable: list[PartName] | None = Field(None, description=(
        "The parts that train in this stage (the others keep their weights): "
        "`image_encoder`, `text_encoder`, `fusion`, `decoder`, `projector` (the LM's image "
        "projector), `lora` (every LoRA adapter), `heads` (ITC, ITM, VQA). A part the model "
        "config freezes stays frozen. Null: every part the model config trains."))
    tasks: dict[str, Annotated[float, Field(ge=0)]] | None = Field(None, description=(
        "Task weights of this stage (e.g. `{caption: 1, itc: 0}`); tasks it leaves out keep "
        "`train.tasks`. Null: `train.tasks` (and `train.task_schedule`)."))
    lr: float | None = Field(None, gt=0, description=(
        "Peak learning rate of this stage; null: `train.lr`."))
    warmup_steps: int | None = Field(None, ge=0, description=(
        "Warmup steps at the start of this stage; null: `train.warmup_steps`."))

    @model_validator(mode="after")
    def _has_a_budget(self) -> StageConfig:
        if self.max_steps is None and self.max_minutes is None:
            raise ValueError("a stage needs max_steps or max_minutes (or both)")
        return self
