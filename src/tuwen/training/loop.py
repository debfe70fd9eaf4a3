"""The training loop: prepare, resume, loop, log, validate, save.

``train`` reads top to bottom; what it calls lives next to it: ``parts`` (run directory,
model, optimiser), ``loaders`` (the batches), ``step`` (one optimiser step), ``resume``
(checkpoints), ``validation``, ``metrics_log`` and ``progress``. Evaluation is not imported
here: callers pass ``evaluate`` (task metrics at each validation) and ``on_checkpoint``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator

from tuwen.config import Config, TrainConfig
from tuwen.models.image_text_model import ImageTextModel
from tuwen.training.caption_check import check_captions, make_caption_check
from tuwen.training.distributed import any_rank, make_accelerator, whole_model
from tuwen.training.loaders import batches, build_loader, micro_batch_groups
from tuwen.training.metrics_log import MetricsLog, Window
from tuwen.training.parts import Parts, prepare, setup_run, train_mode
from tuwen.training.precision import with_precision
from tuwen.training.preemption import StopRequest
from tuwen.training.progress import Progress
from tuwen.training.resume import check_resumable, resume_state, save
from tuwen.training.stages import Stages, stage_name
from tuwen.training.state import TrainState
from tuwen.training.step import optimisation_step
from tuwen.training.validation import Evaluate, make_validation, validate


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    steps: int
    elapsed_s: float
    samples: int
    skipped: int
    stopped_by: str  # "max_steps", "max_minutes", "SIGTERM" or "SIGINT"


def train(config: Config, run_dir: str | Path, *, resume: bool = False, show_progress: bool = True,
          on_checkpoint: Callable[[int, ImageTextModel], None] | None = None,
          evaluate: Evaluate | None = None) -> TrainResult:
    config, precision_note = with_precision(config)  # train.precision: auto -> bf16 or fp32
    run_dir, accelerator = Path(run_dir), make_accelerator(config.train)
    if precision_note is not None:
        accelerator.print(precision_note)
    # prepare: the config as it runs (checked against the tasks, an hf tower's preprocessing,
    # task weights from the data's labels), assets, model and optimiser, batches, the log
    if resume:  # a checkpoint of another process count is refused before anything is written
        check_resumable(run_dir / "checkpoints", accelerator.num_processes)
    config, assets = setup_run(config, run_dir, accelerator, resume)
    tcfg, main = config.train, accelerator.is_main_process
    parts = prepare(config, assets, accelerator, run_dir)
    loader = build_loader(config, assets, accelerator.process_index, accelerator.num_processes)
    validation = make_validation(config, assets, evaluate) if main else None
    check = make_caption_check(config, assets, run_dir) if main else None  # collapse watch
    ckpt_dir = run_dir / "checkpoints"
    log = MetricsLog(run_dir, enabled=main, config=config.model_dump(mode="json"),
                     wandb_project=tcfg.wandb_project if tcfg.wandb else None)

    # resume: weights, optimiser, schedule, RNG and data position of the newest checkpoint
    state = (resume and resume_state(parts, ckpt_dir)) or TrainState()
    if resume:
        log.truncate_after(state.step)

    progress = Progress(tcfg, state, enabled=main and show_progress)
    window, started = Window(), time.perf_counter() - state.elapsed_s
    train_mode(parts)
    stream = batches(loader, state, config.data.max_bad_fraction)
    stages = Stages(tcfg, accelerator.print)
    with StopRequest() as stop:
        for group in micro_batch_groups(stream, tcfg.grad_accumulation):
            step_cfg = stages.before_step(parts.model, parts.schedule, state)  # train.stages
            if tcfg.stages:
                progress.stage(stage_name(tcfg.stages, state.stage))
            step = optimisation_step(parts, group, step_cfg, state, started)
            window.add(step)
            progress.update(state)
            finished = any_rank(budget_spent(state, step_cfg))  # all ranks agree
            if state.step % tcfg.log_every == 0 or finished:
                record = window.record(state, step.lr, accelerator.num_processes)
                if parts.cache is not None:  # epochs after the first should only hit
                    record.update(parts.cache.take_counts(state.epoch))
                log.log(record)
                progress.show(record)
            check_captions(check, parts.model, accelerator.device, state.step, finished, progress)
            best = tcfg.eval_every is not None and state.step % tcfg.eval_every == 0 and \
                validate(parts, validation, state, tcfg, log, ckpt_dir)
            stopping = any_rank(stop.signal is not None)
            if best or stopping or finished or state.step % tcfg.save_every == 0:
                save(parts, ckpt_dir, state, tcfg.keep_last, best=best)
                if main and on_checkpoint is not None:
                    on_checkpoint(state.step, parts.model)
            if finished or stopping:
                break
    progress.close()
    log.close()

    if not stopping:
        save_model(accelerator, parts, run_dir / "model")
    accelerator.wait_for_everyone()
    stopped_by = (budget_name(state, stages.current or tcfg) if finished
                  else stop.name or "SIGTERM")
    return TrainResult(run_dir, run_dir / "model", state.step, state.elapsed_s, state.samples,
                       state.skipped, stopped_by)


def budget_spent(state: TrainState, tcfg: TrainConfig) -> bool:
    out_of_time = tcfg.max_minutes is not None and state.elapsed_s >= 60 * tcfg.max_minutes
    return state.step >= tcfg.max_steps or out_of_time


def budget_name(state: TrainState, tcfg: TrainConfig) -> str:
    return "max_steps" if state.step >= tcfg.max_steps else "max_minutes"


def save_model(accelerator: Accelerator, parts: Parts, model_dir: Path) -> None:
    """The final model (weights, config; the tokenizer files are there already)."""
    whole = whole_model(accelerator, parts.objective, parts.model)
    if accelerator.is_main_process:
        whole.save_pretrained(model_dir)
