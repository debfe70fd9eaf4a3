"""Where a training run stands: what an exact resume needs besides weights and optimiser."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainState:
    """Everything besides weights and optimiser that an exact resume needs (state.json)."""

    step: int = 0
    epoch: int = 0
    data: dict = field(default_factory=dict)  # the batch source's state_dict(): data position
    elapsed_s: float = 0.0
    samples: int = 0
    skipped: int = 0
    seen: int = 0
    stage: int = 0              # train.stages: the current stage and where it began
    stage_start_step: int = 0
    stage_start_s: float = 0.0
