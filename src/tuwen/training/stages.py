"""``train.stages``: the run as a sequence of stages (config.stages.StageConfig).

Before every optimiser step the loop asks ``Stages.before_step`` for the step's
``TrainConfig``. It moves to the next stage once the current one's budget (steps or
minutes, counted from the stage's start) is spent; on entering a stage (and on the first
step of a resumed run) it sets which parameters train and restarts the learning-rate
schedule at the stage's own rate and warmup. The stage and where it started are part of the
``TrainState``, so a checkpoint holds them and a resumed run continues mid-stage exactly.

The optimiser holds every parameter the model config trains; a part a stage leaves out gets
``requires_grad = False``, so it has no gradient and AdamW leaves it (and its moments) as
they are. Without stages, ``before_step`` returns ``train`` as it is and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from tuwen.config import StageConfig, TrainConfig
from tuwen.errors import ConfigError
from tuwen.training.optim import LRSchedule
from tuwen.training.state import TrainState

# Which parameters (by name in ImageTextModel) each part of ``StageConfig.trainable`` is
PART_PREFIXES = {
    "image_encoder": ("image_encoder.",), "text_encoder": ("text_encoder.",),
    "fusion": ("fusion.",), "decoder": ("decoder.",), "projector": ("decoder.projector.",),
}
HEAD_SUFFIX = "_head"  # a task's heads are model attributes named <something>_head
UNLIMITED = 10 ** 12  # the step budget of a stage that is not the last one


def in_part(name: str, part: str) -> bool:
    if part == "lora":
        return "lora_" in name
    if part == "heads":  # every task's heads (tasks.table), e.g. itc_head, vqa_head
        return name.split(".")[0].endswith(HEAD_SUFFIX)
    return name.startswith(PART_PREFIXES[part])


def stage_name(stages: list[StageConfig], index: int) -> str:
    return stages[index].name or str(index + 1)


def stage_config(train: TrainConfig, index: int, start_step: int,
                 start_s: float) -> TrainConfig:
    """The ``TrainConfig`` of stage ``index`` begun at ``start_step`` / ``start_s``: its task
    weights and learning rate, and, for the last stage, the run's remaining budget (for
    the loop's ``budget_spent``) as absolute step and minutes."""
    stage, last = train.stages[index], index == len(train.stages) - 1
    update: dict = {"lr": stage.lr or train.lr, "max_steps": UNLIMITED, "max_minutes": None}
    if stage.warmup_steps is not None:
        update["warmup_steps"] = stage.warmup_steps
    if stage.tasks is not None:
        update["tasks"] = {**train.tasks, **stage.tasks}  # train.tasks: resolved by the run
        update["task_schedule"] = []
    if last:
        update["max_steps"] = start_step + stage.max_steps if stage.max_steps else UNLIMITED
        if stage.max_minutes is not None:
            update["max_minutes"] = start_s / 60 + stage.max_minutes
    return train.model_copy(update=update)


def schedule_config(stage: StageConfig, step_cfg: TrainConfig) -> TrainConfig:
    """What the learning-rate schedule counts within a stage: its own steps and minutes."""
    return step_cfg.model_copy(update={"max_steps": stage.max_steps or UNLIMITED,
                                       "max_minutes": stage.max_minutes})


@dataclass
class Stages:
    """The stages of ``train`` and the current one's step config."""

    train: TrainConfig
    print: Callable[[str], None] = lambda _: None
    current: TrainConfig | None = None
    held: list[nn.Parameter] | None = None  # what the optimiser holds: the config's trained

    def before_step(self, model: nn.Module, schedule: LRSchedule,
                    state: TrainState) -> TrainConfig:
        """The ``TrainConfig`` of the step about to run (``train`` without stages)."""
        stages = self.train.stages
        if not stages:
            return self.train
        entering = self.current is None  # the run's (or the resumed run's) first step
        if self._spent(state) and state.stage < len(stages) - 1:
            state.stage, state.stage_start_step = state.stage + 1, state.step
            state.stage_start_s, entering = state.elapsed_s, True
        if entering:
            self.current = stage_config(self.train, state.stage, state.stage_start_step,
                                        state.stage_start_s)
            if self.held is None:
                self.held = [p for p in model.parameters() if p.requires_grad]
            trained = set_trainable(model, self.held, stages[state.stage].trainable,
                                    stage_name(stages, state.stage))
            schedule.restart(schedule_config(stages[state.stage], self.current),
                             state.stage_start_step, state.stage_start_s)
            self.print(f"stage {stage_name(stages, state.stage)} ({state.stage + 1}/"
                       f"{len(stages)}) from step {state.step}: trains {', '.join(trained)}")
        return self.current

    def _spent(self, state: TrainState) -> bool:
        stage = self.train.stages[state.stage]
        steps, seconds = state.step - state.stage_start_step, state.elapsed_s - state.stage_start_s
        return (stage.max_steps is not None and steps >= stage.max_steps) or \
            (stage.max_minutes is not None and seconds >= 60 * stage.max_minutes)


def set_trainable(model: nn.Module, held: list[nn.Parameter], parts: list[str] | None,
                  name: str) -> list[str]:
    """Gradients for the parameters of ``parts`` (None: all) among ``held`` (what the model
    config trains, which the optimiser holds); returns the parts that train."""
    held = {id(p) for p in held}
    trains: set[str] = set()
    for param_name, param in model.named_parameters():
        if id(param) not in held:
            continue
        wanted = parts is None or any(in_part(param_name, part) for part in parts)
        param.requires_grad_(wanted)
        if wanted:
            trains.update(p for p in PART_PREFIXES.keys() | {"lora", "heads"}
                          if in_part(param_name, p))
    if not trains:
        raise ConfigError(f"train.stages: stage {name} trains nothing: none of "
                          f"{parts} has a parameter the model config trains")
    return sorted(trains)


def plan_lines(train: TrainConfig, weights: dict[str, float] | None = None) -> list[str]:
    """The stages as ``--dry-run`` prints them; ``weights``: the task weights the run would
    resolve from its data (default: ``train.tasks`` as set)."""
    if not train.stages:
        return []
    out = [f"  plan: {len(train.stages)} stages (the learning-rate schedule restarts in each)"]
    for i, stage in enumerate(train.stages):
        budget = " or ".join(b for b in (stage.max_steps and f"{stage.max_steps} steps",
                                         stage.max_minutes and f"{stage.max_minutes:g} min")
                             if b)
        merged = {**(weights or train.tasks), **(stage.tasks or {})}
        tasks = ", ".join(f"{t}={w:g}" for t, w in merged.items() if w > 0) or \
            "as the data's labels"
        parts = "every trained part" if stage.trainable is None else ", ".join(stage.trainable)
        warmup = train.warmup_steps if stage.warmup_steps is None else stage.warmup_steps
        out.append(f"    {i + 1}. {stage_name(train.stages, i)}: {budget}; trains {parts}; "
                   f"lr {stage.lr or train.lr:g} (warmup {warmup}); tasks {tasks}")
    return out
