"""The training loop: prepare, resume, loop, log, validate, save.

One explicit function, ``train``, reads top to bottom; the parts it uses live next to it
(checkpoint, optim, precision, distributed, validation, cache). Evaluation is not imported
here: callers pass ``evaluate`` (task metrics at each validation) and ``on_checkpoint``.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tuwen.config import TASKS, Config, TrainConfig, save_config
from tuwen.data.augment import build_train_transform
from tuwen.data.dataset import (
    Collator,
    EpochBatchSampler,
    JointDataset,
    MapBatches,
    caption_image_counts,
    example_repeats,
    join_by_image,
)
from tuwen.data.images import ImageTransform
from tuwen.data.prepare import check_train_labels, with_train_tasks
from tuwen.data.streaming import StreamBatches, streaming_batches
from tuwen.data.text import TextNormalizer
from tuwen.errors import TuwenError
from tuwen.models.image_text_model import ImageTextModel, build_model
from tuwen.models.towers import lr_multipliers
from tuwen.training.assets import (
    Assets,
    check_resume_config,
    prepare_assets,
    with_tower_preprocessing,
)
from tuwen.training.cache import FeatureCache, make_feature_cache
from tuwen.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    prune,
    read_best,
    restore_rank_rng,
    save_checkpoint,
    write_best,
)
from tuwen.training.distributed import (
    ShardedBatchSampler,
    any_rank,
    full_states,
    gather_rng_states,
    is_fsdp,
    load_full_states,
    make_accelerator,
    mean_over_ranks,
    whole_model,
)
from tuwen.training.grad_norms import task_gradient_norms
from tuwen.training.metrics_log import MetricsLog
from tuwen.training.objective import JointObjective
from tuwen.training.optim import LRSchedule, build_optimizer, task_weights
from tuwen.training.precision import (
    autocast,
    compile_towers,
    enable_gradient_checkpointing,
    precision_warning,
)
from tuwen.training.preemption import StopRequest
from tuwen.training.validation import Evaluate, Validation, best_mode, is_better, make_validation


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    steps: int
    elapsed_s: float
    samples: int
    skipped: int
    stopped_by: str  # "max_steps", "max_minutes", "SIGTERM" or "SIGINT"


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


@dataclass
class Window:
    """Sums between two log lines."""

    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    steps: int = 0
    samples: int = 0
    start: float = field(default_factory=time.perf_counter)
    task_grad_norms: dict[str, float] = field(default_factory=dict)  # the latest measured

    def add(self, step: StepResult) -> None:
        self.sums["loss"] += step.total
        for name, value in step.losses.items():
            self.sums[f"loss_{name}"] += value
        for name, value in step.weights.items():
            self.sums[f"weight_{name}"] += value
        if step.grad_norm is not None:
            self.sums["grad_norm"] += step.grad_norm
        self.steps += 1
        self.samples += step.samples
        if step.task_grad_norms:
            self.task_grad_norms = step.task_grad_norms

    def record(self, state: TrainState, lr: float, world_size: int = 1) -> dict:
        now = time.perf_counter()
        out = {"step": state.step, "epoch": state.epoch, "lr": lr,
               **{k: v / self.steps for k, v in self.sums.items()}, **self.task_grad_norms,
               "samples_per_sec": world_size * self.samples / max(now - self.start, 1e-9),
               "elapsed_s": round(state.elapsed_s, 2)}
        self.sums.clear()
        self.task_grad_norms = {}
        self.steps, self.samples, self.start = 0, 0, now
        return out


def build_loader(config: Config, assets: Assets, rank: int = 0,
                 world_size: int = 1) -> MapBatches | StreamBatches:
    """The endless training batches, with the data position as state_dict()."""
    data, tcfg = config.data, config.train
    check_train_labels(assets.train, tcfg.tasks.active())
    transform = build_train_transform(data.augment, ImageTransform.for_model(assets.spec))
    workers = data.num_workers
    loader_options = ({"prefetch_factor": data.prefetch_factor,
                       "persistent_workers": data.persistent_workers} if workers else {})
    examples = join_by_image(assets.train.captions, assets.train.questions)
    repeats = example_repeats(examples, assets.train.weights)
    normalizer = TextNormalizer.from_config(data.text)
    collate = Collator(assets.tokenizer, assets.vocab, data.max_text_length,
                       data.spatial_negatives,
                       vqa_answers=config.model.vqa.mode == "generate", normalizer=normalizer,
                       caption_counts=caption_image_counts(assets.train.captions, normalizer)
                       if tcfg.itc_specific_captions else None)
    if assets.train.streams:  # webdataset: each rank and worker streams its own shards
        return streaming_batches(assets.train.streams, transform, collate,
                                 batch_size=tcfg.batch_size, num_workers=data.num_workers,
                                 seed=tcfg.seed, examples=examples, repeats=repeats,
                                 captions_per_image=data.captions_per_image,
                                 questions_per_image=data.questions_per_image, rank=rank,
                                 world_size=world_size, **loader_options)
    dataset = JointDataset(examples, transform, seed=tcfg.seed,
                           captions_per_image=data.captions_per_image,
                           questions_per_image=data.questions_per_image)
    sampler = EpochBatchSampler(len(dataset), tcfg.batch_size, tcfg.seed, repeats=repeats)
    if world_size > 1:  # each rank its share of every global batch
        sampler = ShardedBatchSampler(sampler, rank, world_size)
    if len(sampler) == 0:
        raise TuwenError(f"train split has {len(dataset)} images, fewer than one batch of "
                         f"train.batch_size={tcfg.batch_size}")
    # The loader gets its own generator: starting an iterator draws a worker seed, and from
    # the global RNG that draw would shift every later random number after a resume.
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                        generator=torch.Generator().manual_seed(tcfg.seed), **loader_options)
    return MapBatches(loader, sampler)


def batches(source: MapBatches | StreamBatches, state: TrainState,
            max_bad_fraction: float) -> Iterator[dict]:
    """Endless batches from the saved data position on; keeps ``state`` current."""
    if state.data:
        source.load_state_dict(state.data)
    for batch in source:
        state.data, state.epoch = source.state_dict(), source.epoch
        count_bad(state, batch, max_bad_fraction)
        if batch["size"]:
            yield batch


def count_bad(state: TrainState, batch: dict, max_fraction: float) -> None:
    state.skipped += batch["n_skipped"]
    state.seen += batch["n_skipped"] + batch["size"]
    for reason in batch["skipped"]:
        tqdm.write(f"skipped sample: {reason}")
    # A few bad files early on should not kill a run; judge the fraction on a fair sample.
    if state.seen >= 100 and state.skipped > max_fraction * state.seen:
        raise TuwenError(f"{state.skipped} of {state.seen} samples could not be loaded, more "
                         f"than data.max_bad_fraction={max_fraction}; last: "
                         f"{batch['skipped'][-1] if batch['skipped'] else 'see log above'}")


@dataclass
class StepResult:
    total: float
    losses: dict[str, float]
    weights: dict[str, float]
    grad_norm: float | None
    samples: int
    lr: float
    task_grad_norms: dict[str, float] = field(default_factory=dict)


@dataclass
class Parts:
    """What the loop works with once prepared."""

    accelerator: Accelerator
    objective: torch.nn.Module      # JointObjective, wrapped by Accelerate (DDP/FSDP)
    model: ImageTextModel           # the bare model inside it
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    cache: FeatureCache | None
    best: tuple[str, float] | None = None  # (metric, value) of the last improvement
    task_grad_norm_every: int | None = None  # None where it cannot be measured (FSDP)


def accumulate_gradients(parts: Parts, micro_batches: list[dict], weights: dict[str, float],
                         precision: str, measure_tasks: bool = False,
                         ) -> tuple[dict[str, float], int, dict[str, float]]:
    """Forward and backward over the micro-batches of one step; the gradient is that of the
    mean of their losses, synchronised across processes on the last one only. Returns the
    mean losses, the number of samples and, with ``measure_tasks``, each task's gradient
    norm on the first micro-batch (mean over processes)."""
    accelerator, n = parts.accelerator, len(micro_batches)
    sums: dict[str, float] = defaultdict(float)
    norms: dict[str, float] = {}
    samples = 0
    for i, batch in enumerate(micro_batches):
        batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v
                 for k, v in batch.items()}
        sync = accelerator.no_sync(parts.objective) if i < n - 1 else contextlib.nullcontext()
        with sync:
            with autocast(precision, accelerator.device):
                total, losses = parts.objective(batch, weights)
            if measure_tasks and i == 0:
                trainable = [p for p in parts.objective.parameters() if p.requires_grad]
                norms = task_gradient_norms(losses, weights, trainable)
            accelerator.backward(total / n)
        sums["loss"] += total.item() / n
        for name, value in losses.items():
            sums[name] += value.item() / n
        samples += batch["size"]
    if measure_tasks:  # a collective: every rank measures on the same steps
        norms = mean_over_ranks(norms, tuple(f"grad_norm_{t}" for t in TASKS))
    return mean_over_ranks(dict(sums), ("loss", *TASKS)), samples, norms


def optimisation_step(parts: Parts, micro_batches: list[dict], tcfg: TrainConfig,
                      state: TrainState, started: float) -> StepResult:
    """One optimiser step over ``grad_accumulation`` micro-batches."""
    weights = task_weights(state.step, tcfg)
    every = parts.task_grad_norm_every
    losses, samples, task_norms = accumulate_gradients(
        parts, micro_batches, weights, tcfg.precision,
        measure_tasks=every is not None and (state.step + 1) % every == 0)
    grad_norm = (parts.accelerator.clip_grad_norm_(parts.objective.parameters(), tcfg.grad_clip)
                 if tcfg.grad_clip else None)
    state.elapsed_s = time.perf_counter() - started
    lr = parts.schedule.step(state.step, state.elapsed_s)
    parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.samples += samples
    total = losses.pop("loss")
    return StepResult(total, losses, weights if tcfg.task_schedule else {},
                      None if grad_norm is None else float(grad_norm), samples, lr, task_norms)


def micro_batch_groups(stream: Iterator[dict], size: int) -> Iterator[list[dict]]:
    while True:
        yield [next(stream) for _ in range(size)]


def prepare(config: Config, assets: Assets, accelerator: Accelerator, run_dir: Path) -> Parts:
    tcfg = config.train
    if (warning := precision_warning(tcfg.precision, accelerator.device)) is not None:
        accelerator.print(warning)
    model = build_model(assets.spec)
    if tcfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    cache = make_feature_cache(config, model, run_dir, str(accelerator.process_index))
    if tcfg.compile:
        compile_towers(model)
    objective = JointObjective(model, tcfg.label_smoothing,
                               gather=accelerator.num_processes > 1)
    optimizer = build_optimizer(model, tcfg, lr_multipliers(model, config.model))
    objective, optimizer = accelerator.prepare(objective, optimizer)
    model = accelerator.unwrap_model(objective).model
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
    if parts.cache is not None:  # a frozen, cached encoder runs as it did when cached
        parts.model.image_encoder.eval()


def resume_state(parts: Parts, ckpt_dir: Path) -> TrainState | None:
    """Restore the newest complete checkpoint (weights, optimiser, schedule, grad scaler,
    this rank's RNG); None when there is none."""
    path = latest_checkpoint(ckpt_dir)
    if path is None:
        return None
    fsdp = is_fsdp(parts.accelerator)
    saved, optimizer_state, rng_states = load_checkpoint(path, None if fsdp else parts.model)
    if fsdp:
        load_full_states(parts.objective, parts.optimizer, load_weights(path), optimizer_state)
    else:
        parts.optimizer.load_state_dict(optimizer_state)
    parts.schedule.load_state_dict(saved["scheduler"])
    if parts.accelerator.scaler is not None and saved.get("scaler"):
        parts.accelerator.scaler.load_state_dict(saved["scaler"])
    accelerator = parts.accelerator
    restore_rank_rng(rng_states, accelerator.process_index, accelerator.num_processes)
    accelerator.print(f"resumed from {path} at step {saved['train']['step']}")
    return TrainState(**saved["train"])


def save(parts: Parts, ckpt_dir: Path, state: TrainState, keep_last: int) -> None:
    """A checkpoint of every rank's state, written by the main process (call on all ranks)."""
    accelerator = parts.accelerator
    rng_states = gather_rng_states()
    if is_fsdp(accelerator):
        weights, optimizer_state = full_states(parts.objective, parts.optimizer)
    else:
        weights, optimizer_state = parts.model, parts.optimizer.state_dict()
    if accelerator.is_main_process:
        scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
        save_checkpoint(ckpt_dir, state.step, weights, optimizer_state,
                        {"train": vars(state), "scheduler": parts.schedule.state_dict(),
                         "scaler": scaler, "world_size": accelerator.num_processes},
                        rng_states)
        prune(ckpt_dir, keep_last)
    accelerator.wait_for_everyone()


def validate(parts: Parts, validation: Validation | None, state: TrainState, tcfg: TrainConfig,
             log: MetricsLog, ckpt_dir: Path) -> bool:
    """Validation record to the log (main process); True on every rank if ``best_metric``
    improved, so that the caller saves this step as the best checkpoint."""
    improved = False
    if validation is not None and parts.accelerator.is_main_process:
        record = validation.run(parts.model, state.step, task_weights(state.step, tcfg),
                                parts.accelerator.device)
        train_mode(parts)
        log.log(record)
        metric = tcfg.best_metric
        if metric is not None and metric in record:
            improved = is_better(record[metric], read_best(ckpt_dir),
                                 best_mode(metric, tcfg.best_mode))
            if improved:
                parts.best = (metric, record[metric])
    return any_rank(improved)


def setup_run(config: Config, run_dir: Path, accelerator: Accelerator, resume: bool) -> Assets:
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        check_resume_config(config, run_dir)
    if accelerator.is_main_process:
        save_config(config, run_dir / "config.yaml")
    set_seed(config.train.seed)
    # The main process builds and writes the tokenizer; the others then read it.
    with accelerator.main_process_first():
        return prepare_assets(config, run_dir / "model",
                              reuse=resume or not accelerator.is_main_process)


def train(config: Config, run_dir: str | Path, *, resume: bool = False, show_progress: bool = True,
          on_checkpoint: Callable[[int, ImageTextModel], None] | None = None,
          evaluate: Evaluate | None = None) -> TrainResult:
    config = with_tower_preprocessing(config)  # an hf image tower's size and normalisation
    run_dir, tcfg = Path(run_dir), config.train
    accelerator = make_accelerator(tcfg)
    main = accelerator.is_main_process
    assets = setup_run(config, run_dir, accelerator, resume)
    config = with_train_tasks(config, assets.train, accelerator.print)  # unset: as the data
    tcfg = config.train
    parts = prepare(config, assets, accelerator, run_dir)
    loader = build_loader(config, assets, accelerator.process_index, accelerator.num_processes)
    validation = make_validation(config, assets, evaluate) if main else None

    ckpt_dir = run_dir / "checkpoints"
    log = MetricsLog(run_dir, enabled=main, config=config.model_dump(mode="json"),
                     wandb_project=tcfg.wandb_project if tcfg.wandb else None)
    state = (resume and resume_state(parts, ckpt_dir)) or TrainState()
    if resume:
        log.truncate_after(state.step)

    bar = tqdm(total=tcfg.max_steps, initial=state.step, disable=not (main and show_progress),
               desc="train", dynamic_ncols=True)
    window, started, stopped_by = Window(), time.perf_counter() - state.elapsed_s, "max_steps"
    train_mode(parts)
    stream = batches(loader, state, config.data.max_bad_fraction)
    with StopRequest() as stop:
        for group in micro_batch_groups(stream, tcfg.grad_accumulation):
            step = optimisation_step(parts, group, tcfg, state, started)
            window.add(step)
            bar.update(1)
            out_of_time = tcfg.max_minutes is not None and state.elapsed_s >= 60 * tcfg.max_minutes
            finished = any_rank(state.step >= tcfg.max_steps or out_of_time)  # all ranks agree
            if state.step % tcfg.log_every == 0 or finished:
                record = window.record(state, step.lr, accelerator.num_processes)
                log.log(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}",
                                sps=f"{record['samples_per_sec']:.0f}")
            best = tcfg.eval_every is not None and state.step % tcfg.eval_every == 0 and \
                validate(parts, validation, state, tcfg, log, ckpt_dir)
            stopping = any_rank(stop.signal is not None)
            if best or stopping or finished or state.step % tcfg.save_every == 0:
                save(parts, ckpt_dir, state, tcfg.keep_last)
                if main and best:
                    write_best(ckpt_dir, state.step, *parts.best)
                if main and on_checkpoint is not None:
                    on_checkpoint(state.step, parts.model)
            if finished or stopping:
                stopped_by = ("max_steps" if state.step >= tcfg.max_steps else "max_minutes") \
                    if finished else (stop.name or "SIGTERM")
                break
    bar.close()
    log.close()

    model_dir = run_dir / "model"
    if not stopping:
        whole = whole_model(accelerator, parts.objective, parts.model)
        if main:
            whole.save_pretrained(model_dir)
    accelerator.wait_for_everyone()
    return TrainResult(run_dir, model_dir, state.step, state.elapsed_s, state.samples,
                       state.skipped, stopped_by)
