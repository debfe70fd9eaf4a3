"""``train``: the task weights, optimiser and schedule, logging, checkpoints and scale
(docs/training.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, model_validator

from tuwen.config.base import Section
from tuwen.config.stages import StageConfig
from tuwen.config.tasks import check_task_names, task_catalog

# Keys that moved into a task's options (tuwen.tasks), under train.task_options; the root
# Config reads a config written before in the new place (config.root)
MOVED = {("train", "label_smoothing"): "train.task_options.caption.label_smoothing",
         ("train", "itc_specific_captions"): "train.task_options.itc.specific_captions",
         ("data", "spatial_negatives"): "train.task_options.itm.spatial_negatives"}


Weight = Annotated[float, Field(ge=0)]


class TaskWeightPoint(Section):
    """One point of ``train.task_schedule``: the weights of the tasks it names at ``step``,
    written ``{step: 100, caption: 0.5}``."""

    step: int = Field(ge=0, description="The optimiser step of this point.")
    weights: dict[str, Weight] = Field({}, description=(
        "Task name -> weight here (written beside `step`); a task it does not name has no "
        "point here."))

    @model_validator(mode="before")
    @classmethod
    def _weights_beside_step(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "weights" not in raw:
            return {"step": raw.get("step"),
                    "weights": {k: v for k, v in raw.items() if k != "step"}}
        return raw


class TrainConfig(Section):
    """The training run: optimisation, logging, checkpoints and scale."""

    seed: int = Field(0, description="Seeds weights, data order, sampling and augmentation.")
    deterministic: bool = Field(True, description=(
        "PyTorch's deterministic algorithms (and on GPU the cuDNN and cuBLAS switches): the "
        "same seed, thread count and hardware give bitwise-equal weights, also across a kill "
        "and `--resume`. Different thread counts may still differ. See docs/reliability.md."))
    batch_size: int = Field(64, ge=1, description=(
        "Images per micro-batch on each process (each with its captions and questions). The "
        "default suits the from-scratch shapes demo; with frozen pretrained towers on a few "
        "hundred images `configs/real_pretrained.yaml` uses 32, and a pretrained LM decoder "
        "8 (docs/experiments/2026-12-07-pretrained-towers.md, docs/which-decoder.md)."))
    max_steps: int = Field(2000, ge=1, description="Optimiser steps to train.")
    max_minutes: float | None = Field(None, gt=0, description=(
        "Wall-clock budget in minutes: training stops when it is spent (before `max_steps`) "
        "and saves; null: none."))
    lr: float = Field(1e-3, gt=0, description=(
        "Peak learning rate (AdamW) of everything that trains: the heads, projections, "
        "fusion and decoder, and the towers times their `lr_multiplier`. The default was "
        "tuned on the shapes demo and kept by the sweep with frozen pretrained towers "
        "(docs/experiments/2026-12-07-pretrained-towers.md)."))
    weight_decay: float = Field(0.05, ge=0, description=(
        "AdamW weight decay (not on biases, norms and embeddings)."))
    betas: tuple[float, float] = Field((0.9, 0.98), description="AdamW betas.")
    warmup_steps: int = Field(100, ge=0, description=(
        "Steps of linear warmup from 0 to `lr`. With frozen pretrained towers a quarter of "
        "a short run's steps learned best; a few steps only can diverge at a high `lr` "
        "(docs/experiments/2026-12-07-pretrained-towers.md)."))
    min_lr_ratio: float = Field(0.05, ge=0, le=1, description=(
        "The schedule ends at `lr` times this (0..1)."))
    grad_clip: float | None = Field(1.0, gt=0, description=(
        "Clip the global gradient norm to this; null: no clipping."))
    precision: Literal["fp32", "bf16", "fp16", "auto"] = Field("fp32", description=(
        "`fp32`, or mixed precision `bf16` / `fp16` (fp16 with a gradient scaler), or `auto`: "
        "bf16 autocast where the hardware computes bf16 natively (a GPU that supports it, a "
        "CPU with AVX512-BF16 or AMX), fp32 elsewhere; the run prints its choice and "
        "config.yaml records it."))
    log_every: int = Field(20, ge=1, description=(
        "Steps between lines of `RUN/metrics.jsonl` (and TensorBoard)."))
    save_every: int = Field(500, ge=1, description=(
        "Steps between checkpoints in `RUN/checkpoints/step-N/`."))
    keep_last: int = Field(2, ge=1, description=(
        "Checkpoints kept (the newest ones, besides the best one)."))
    tasks: dict[str, Weight] = Field({}, description=(
        "Task name -> loss weight (>= 0; 0: off); the total loss is their weighted sum. A "
        "task left out follows the training data: weight 1 when the data has its labels, "
        "else 0; the run logs which tasks it trains. The tasks: docs/design.md."))
    task_options: dict[str, dict[str, Any]] = Field({}, description=(
        "Task name -> that task's options (checked against the options the task declares; "
        "each task's are listed below as `train.task_options.<task>`)."))
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description=(
        "Learning-rate decay after the warmup, down to `lr * min_lr_ratio`."))
    task_schedule: list[TaskWeightPoint] = Field([], description=(
        "Task weights that change during training: each task a point names is interpolated "
        "linearly between its points and held after the last; other tasks keep `tasks`."))
    stages: list[StageConfig] = Field([], description=(
        "A recipe in stages, run in order, each with its own budget, trainable parts, task "
        "weights and learning rate (the schedule restarts per stage); the run ends with the "
        "last stage, and `max_steps` / `max_minutes` do not apply. Empty: one stage."))
    grad_accumulation: int = Field(1, ge=1, description=(
        "Micro-batches of `batch_size` per optimiser step."))
    whole_batch_negatives: bool = Field(True, description=(
        "With `grad_accumulation` > 1 and ITC on: ITC's negatives and ITM's hard negatives "
        "come from every micro-batch of the step (and every process), as in one batch "
        "`grad_accumulation` times larger (GradCache: the towers run twice, the memory stays "
        "about one micro-batch's; docs/training.md). false: each micro-batch's own "
        "negatives."))
    gradient_checkpointing: bool = Field(False, description=(
        "Recompute the small towers' blocks in the backward pass: less memory, more time."))
    compile: bool = Field(False, description="`torch.compile` the towers.")
    distributed: Literal["ddp", "fsdp"] = Field("ddp", description=(
        "Data parallelism when launched on several processes (`accelerate launch`): "
        "`ddp` replicates the model, `fsdp` shards it."))
    best_metric: str | None = Field(None, description=(
        "A validation key (e.g. `val_loss`, `retrieval.t2i_r1`): the checkpoint where it is "
        "best is kept as the best one; null: none."))
    best_mode: Literal["min", "max"] | None = Field(None, description=(
        "Whether `best_metric` is better low or high. Default: `min` for keys with `loss` "
        "in them, else `max`."))
    eval_every: int | None = Field(None, ge=1, description=(
        "Steps between validations (losses and metrics on `val_max_images` images of "
        "`data.val_split`); null: no validation during training."))
    task_grad_norm_every: int | None = Field(100, ge=1, description=(
        "Steps between measurements of each task's gradient norm (one extra backward per "
        "task); null: never."))
    val_max_images: int = Field(256, ge=1, description="Images in the validation subset.")
    collapse_share: float = Field(0.9, gt=0, le=1, description=(
        "Warn when one generated caption covers at least this share of the validation "
        "images (0..1)."))
    collapse_distinct: float = Field(0.2, ge=0, le=1, description=(
        "Also warn when at most this share of the checked captions are distinct (0..1): a "
        "model that names one of a few safe captions has collapsed too."))
    caption_check_every: int | None = Field(50, ge=1, description=(
        "Without `eval_every`: steps between cheap collapse checks (greedy captions for "
        "`caption_check_images` held-out images, or training images when the validation "
        "split has none) and at the last step; a collapse warns in the log, the progress "
        "bar and metrics.jsonl (`check_*`, shown by the report). null: no check."))
    caption_check_images: int = Field(16, ge=2, description=(
        "Images captioned by each collapse check."))
    wandb: bool = Field(False, description=(
        "Also log to Weights & Biases, offline (`wandb sync` uploads); needs `wandb`."))
    wandb_project: str = Field("tuwen", description="The Weights & Biases project name.")
    feature_cache: bool | Literal["auto"] = Field("auto", description=(
        "Cache a frozen tower's outputs on disk, so it runs once per image (and once per "
        "distinct text) instead of every step: `auto` caches each tower that is frozen "
        "(`model.*_encoder.freeze: true`) and turns `data.augment` off with a logged line "
        "when the image tower is cached (a crop or jitter would be new pixels every epoch); "
        "`true` does the same and fails without a frozen tower; `false` never caches. "
        "Training images are encoded in one batched pass before the first step. "
        "docs/pretrained.md says why augmentation is turned off rather than cached."))
    feature_cache_dir: str | None = Field(None, description=(
        "Where the feature cache lives. Default: `RUN/feature_cache`."))

    @model_validator(mode="before")
    @classmethod
    def _unset_weights_written_as_null(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("tasks"), dict):
            # saved before weights were a mapping: an unset weight was written as null
            raw = {**raw, "tasks": {k: v for k, v in raw["tasks"].items() if v is not None}}
        return raw

    @model_validator(mode="after")
    def _schedule_steps_increase(self) -> TrainConfig:
        steps = [p.step for p in self.task_schedule]
        if steps != sorted(set(steps)):
            raise ValueError(f"train.task_schedule: steps must increase, got {steps}")
        return self

    @model_validator(mode="after")
    def _known_tasks(self, info: ValidationInfo) -> TrainConfig:
        """Task names and options against the table of tasks, when validation is given one
        (``tuwen.tasks.table`` loads every run config so)."""
        catalog = task_catalog(info)
        if catalog is None:
            return self
        check_task_names(catalog, "train.tasks", self.tasks)
        for i, point in enumerate(self.task_schedule):
            check_task_names(catalog, f"train.task_schedule[{i}]", point.weights)
        for i, stage in enumerate(self.stages):
            check_task_names(catalog, f"train.stages[{i}].tasks", stage.tasks or {})
        check_task_names(catalog, "train.task_options", self.task_options)
        for name, raw in self.task_options.items():
            catalog[name].options_from(raw, f"train.task_options.{name}")
        return self

    def weight_given(self, task: str) -> float | None:
        """The weight the config sets for ``task``; None: follow the data."""
        return self.tasks.get(task)
