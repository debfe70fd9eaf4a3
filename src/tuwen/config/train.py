"""``train``: the task weights, optimiser and schedule, logging, checkpoints and scale
(docs/training.md)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from pydantic import Field, model_validator

from tuwen.config.base import Section
from tuwen.config.sources import SOURCE_LABELS

TASKS = ("caption", "itc", "itm", "vqa")
# the label each task trains on: captions feed captioning, ITC and ITM; questions feed VQA
TASK_LABELS = {"caption": "caption", "itc": "caption", "itm": "caption", "vqa": "vqa"}

_UNSET = " Unset: 1 when the training data has {labels}, else 0 (the task does not run)."


def _weight(task: str, labels: str) -> float | None:
    return Field(None, ge=0, description=f"Loss weight of {task} (>= 0; 0: off)."
                 + _UNSET.format(labels=labels))


class TaskWeights(Section):
    """Per-task loss weights. A weight left unset follows the training data: 1 when the data
    has the task's labels, else 0; a weight set > 0 for a task without labels is an error."""

    caption: float | None = _weight("captioning, the language-model cross-entropy", "captions")
    itc: float | None = _weight("image-text contrastive learning, InfoNCE", "captions")
    itm: float | None = _weight("image-text matching with hard negatives", "captions")
    vqa: float | None = _weight("visual question answering", "questions")

    def given(self) -> dict[str, float]:
        """The weights the config sets."""
        return {name: w for name in TASKS if (w := getattr(self, name)) is not None}

    def weights(self, labels: Collection[str] = SOURCE_LABELS) -> dict[str, float]:
        """Every task's weight on data with ``labels`` (``caption``, ``vqa``)."""
        return {name: w if (w := getattr(self, name)) is not None
                else float(TASK_LABELS[name] in labels) for name in TASKS}

    def active(self, labels: Collection[str] = SOURCE_LABELS) -> dict[str, float]:
        """The tasks that train on data with ``labels``, with their weights (> 0)."""
        return {name: w for name, w in self.weights(labels).items() if w > 0}

    def resolved(self, labels: Collection[str]) -> TaskWeights:
        """These weights with every unset one decided by ``labels``."""
        return TaskWeights(**self.weights(labels))


class TaskWeightPoint(Section):
    """One point of ``train.task_schedule``: the weights of the tasks it names at ``step``."""

    step: int = Field(ge=0, description="The optimiser step of this point.")
    caption: float | None = Field(None, ge=0, description="Caption weight here; unset: no point.")
    itc: float | None = Field(None, ge=0, description="ITC weight here; unset: no point.")
    itm: float | None = Field(None, ge=0, description="ITM weight here; unset: no point.")
    vqa: float | None = Field(None, ge=0, description="VQA weight here; unset: no point.")

    def weights(self) -> dict[str, float]:
        return {name: w for name in TASKS if (w := getattr(self, name)) is not None}


class TrainConfig(Section):
    """The training run: optimisation, logging, checkpoints and scale."""

    seed: int = Field(0, description="Seeds weights, data order, sampling and augmentation.")
    deterministic: bool = Field(True, description=(
        "PyTorch's deterministic algorithms (and on GPU the cuDNN and cuBLAS switches): the "
        "same seed, thread count and hardware give bitwise-equal weights, also across a kill "
        "and `--resume`. Different thread counts may still differ. See docs/reliability.md."))
    batch_size: int = Field(64, ge=1, description=(
        "Images per micro-batch on each process (each with its captions and questions)."))
    max_steps: int = Field(2000, ge=1, description="Optimiser steps to train.")
    max_minutes: float | None = Field(None, gt=0, description=(
        "Wall-clock budget in minutes: training stops when it is spent (before `max_steps`) "
        "and saves; null: none."))
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.05, ge=0, description=(
        "AdamW weight decay (not on biases, norms and embeddings)."))
    betas: tuple[float, float] = Field((0.9, 0.98), description="AdamW betas.")
    warmup_steps: int = Field(100, ge=0, description="Steps of linear warmup from 0 to `lr`.")
    min_lr_ratio: float = Field(0.05, ge=0, le=1, description=(
        "The schedule ends at `lr` times this (0..1)."))
    grad_clip: float | None = Field(1.0, gt=0, description=(
        "Clip the global gradient norm to this; null: no clipping."))
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description=(
        "`fp32`, or mixed precision `bf16` / `fp16` (fp16 with a gradient scaler)."))
    log_every: int = Field(20, ge=1, description=(
        "Steps between lines of `RUN/metrics.jsonl` (and TensorBoard)."))
    save_every: int = Field(500, ge=1, description=(
        "Steps between checkpoints in `RUN/checkpoints/step-N/`."))
    keep_last: int = Field(2, ge=1, description=(
        "Checkpoints kept (the newest ones, besides the best one)."))
    label_smoothing: float = Field(0.0, ge=0, lt=1, description=(
        "Label smoothing of the captioning cross-entropy (0..1)."))
    tasks: TaskWeights = Field(TaskWeights(), description=(
        "Per-task loss weights; the total loss is their weighted sum. Unset weights follow "
        "the training data's labels, and the run logs which tasks it trains."))
    itc_specific_captions: bool = Field(False, description=(
        "Image-to-text ITC targets weigh each caption by 1 / (training images with that "
        "caption): an image's rarer, more specific captions count more."))
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description=(
        "Learning-rate decay after the warmup, down to `lr * min_lr_ratio`."))
    task_schedule: list[TaskWeightPoint] = Field([], description=(
        "Task weights that change during training: each task a point names is interpolated "
        "linearly between its points and held after the last; other tasks keep `tasks`."))
    grad_accumulation: int = Field(1, ge=1, description=(
        "Micro-batches of `batch_size` per optimiser step."))
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

    @model_validator(mode="after")
    def _some_task(self) -> TrainConfig:
        if not self.tasks.active() and not any(
                w > 0 for p in self.task_schedule for w in p.weights().values()):
            raise ValueError("train.tasks: at least one task weight must be > 0")
        steps = [p.step for p in self.task_schedule]
        if steps != sorted(set(steps)):
            raise ValueError(f"train.task_schedule: steps must increase, got {steps}")
        return self
