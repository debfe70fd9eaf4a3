"""Preparing a run: its directory and assets, then the model, objective, optimiser and
schedule that the loop works with, placed by Accelerate (one process, DDP or FSDP)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from tuwen.config import Config, save_config
from tuwen.models.image_text_model import ImageTextModel, build_model
from tuwen.models.towers import lr_multipliers
from tuwen.tasks.table import checked, task_options, with_train_tasks
from tuwen.training.assets import (
    Assets,
    check_resume_config,
    prepare_assets,
    with_tower_preprocessing,
)
from tuwen.training.determinism import configure_determinism
from tuwen.training.distributed import is_fsdp
from tuwen.training.frozen import Caches, make_caches, precompute_images, with_frozen_caches
from tuwen.training.objective import JointObjective
from tuwen.training.optim import LRSchedule, build_optimizer
from tuwen.training.precision import (
    compile_towers,
    enable_gradient_checkpointing,
    precision_warning,
)


@dataclass
class Parts:
    """What the loop works with once prepared."""

    accelerator: Accelerator
    objective: torch.nn.Module      # JointObjective, wrapped by Accelerate (DDP/FSDP)
    model: ImageTextModel           # the bare model inside it
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    cache: Caches | None            # the frozen towers' feature caches
    best: tuple[str, float] | None = None  # (metric, value) of the last improvement
    task_grad_norm_every: int | None = None  # None where it cannot be measured (FSDP)


def setup_run(config: Config, run_dir: Path, accelerator: Accelerator,
              resume: bool) -> tuple[Config, Assets]:
    """The config as the run runs it (checked against the table of tasks, an hf image tower's
    preprocessing, unset task weights decided by the training data's labels), the run
    directory, its config.yaml, the seed, and the assets (tokenizers, answer vocabulary)."""
    # a frozen tower is cached, and augmentation the cache cannot serve is off (logged)
    config = with_frozen_caches(with_tower_preprocessing(checked(config)))
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        check_resume_config(config, run_dir)
    if accelerator.is_main_process:
        save_config(config, run_dir / "config.yaml")
    set_seed(config.train.seed)
    configure_determinism(config.train.deterministic)
    # The main process builds and writes the tokenizer; the others then read it.
    with accelerator.main_process_first():
        assets = prepare_assets(config, run_dir / "model",
                                reuse=resume or not accelerator.is_main_process)
    return with_train_tasks(config, assets.train, accelerator.print), assets


def prepare(config: Config, assets: Assets, accelerator: Accelerator, run_dir: Path) -> Parts:
    tcfg = config.train
    if (warning := precision_warning(tcfg.precision, accelerator.device)) is not None:
        accelerator.print(warning)
    model = build_model(assets.spec)
    if tcfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    cache = make_caches(config, model, run_dir, assets.spec.text_vocab[1],
                        str(accelerator.process_index), log=accelerator.print)
    if tcfg.compile:
        compile_towers(model)
    objective = JointObjective(model, task_options(config),
                               gather=accelerator.num_processes > 1)
    optimizer = build_optimizer(model, tcfg, lr_multipliers(model, config.model))
    objective, optimizer = accelerator.prepare(objective, optimizer)
    model = accelerator.unwrap_model(objective).model
    if cache is not None:  # the frozen image tower runs once per training image, here
        precompute_images(cache, model, config, assets.spec, assets.train, accelerator.device,
                          accelerator.process_index, accelerator.num_processes,
                          show_progress=accelerator.is_main_process)
    every = tcfg.task_grad_norm_every
    if every is not None and is_fsdp(accelerator):
        accelerator.print("train.task_grad_norm_every: per-task gradient norms are not measured "
                          "under FSDP (each rank holds a shard of the gradient); only the total "
                          "grad_norm is logged")
        every = None
    return Parts(accelerator, objective, model, optimizer, LRSchedule(optimizer, tcfg), cache,
                 task_grad_norm_every=every)


def train_mode(parts: Parts) -> None:
    parts.objective.train()
    if parts.cache is not None and parts.cache.image is not None:
        parts.model.image_encoder.eval()  # a frozen, cached encoder runs as it did when cached
