"""The training loop: prepare, resume, loop, log, save.

Evaluation is not imported here; callers pass ``on_checkpoint`` if they want to evaluate.
"""

from __future__ import annotations

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

from tuwen.config import Config, TrainConfig, save_config
from tuwen.data.dataset import Collator, EpochBatchSampler, JointDataset, join_by_image
from tuwen.data.images import ImageTransform
from tuwen.errors import TuwenError
from tuwen.models.builder import build_model
from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks.joint import joint_step
from tuwen.training.assets import Assets, check_resume_config, prepare_assets
from tuwen.training.checkpoint import latest_checkpoint, load_checkpoint, prune, save_checkpoint
from tuwen.training.metrics_log import MetricsLog
from tuwen.training.optim import build_optimizer, lr_factor, progress, set_lr

PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    steps: int
    elapsed_s: float
    samples: int
    skipped: int
    stopped_by: str  # "max_steps" or "max_minutes"


@dataclass
class TrainState:
    """Everything besides weights and optimiser that an exact resume needs (state.json)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0   # batches of `epoch` already consumed
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

    def add(self, total: torch.Tensor, losses: dict, grad_norm, samples: int) -> None:
        self.sums["loss"] += total.item()
        for name, value in losses.items():
            self.sums[f"loss_{name}"] += value.item()
        if grad_norm is not None:
            self.sums["grad_norm"] += float(grad_norm)
        self.steps += 1
        self.samples += samples

    def record(self, state: TrainState, lr: float) -> dict:
        now = time.perf_counter()
        out = {"step": state.step, "epoch": state.epoch, "lr": lr,
               **{k: v / self.steps for k, v in self.sums.items()},
               "samples_per_sec": self.samples / max(now - self.start, 1e-9),
               "elapsed_s": round(state.elapsed_s, 2)}
        self.sums.clear()
        self.steps, self.samples, self.start = 0, 0, now
        return out


def build_loader(config: Config, assets: Assets) -> tuple[DataLoader, EpochBatchSampler]:
    data, tcfg = config.data, config.train
    dataset = JointDataset(join_by_image(assets.train.captions, assets.train.questions),
                           ImageTransform(data.image_size, data.image_mean, data.image_std),
                           seed=tcfg.seed, captions_per_image=data.captions_per_image,
                           questions_per_image=data.questions_per_image)
    sampler = EpochBatchSampler(len(dataset), tcfg.batch_size, tcfg.seed)
    if len(sampler) == 0:
        raise TuwenError(f"train split has {len(dataset)} images, fewer than one batch of "
                         f"train.batch_size={tcfg.batch_size}")
    # The loader gets its own generator: starting an iterator draws a worker seed, and from
    # the global RNG that draw would shift every later random number after a resume.
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=data.num_workers,
                        collate_fn=Collator(assets.tokenizer, assets.vocab, data.max_text_length,
                                            data.spatial_negatives),
                        generator=torch.Generator().manual_seed(tcfg.seed))
    return loader, sampler


def batches(loader: DataLoader, sampler: EpochBatchSampler, state: TrainState,
            max_bad_fraction: float) -> Iterator[dict]:
    """Endless batches from the saved data position on; keeps ``state`` current."""
    while True:
        sampler.set_position(state.epoch, state.batch_in_epoch)
        loader.dataset.set_epoch(state.epoch)
        for batch in loader:
            state.batch_in_epoch += 1
            count_bad(state, batch, max_bad_fraction)
            if batch["size"]:
                yield batch
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0


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


def optimisation_step(accelerator: Accelerator, model, optimizer, batch: dict,
                      tcfg: TrainConfig, state: TrainState, started: float):
    batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with accelerator.autocast():
        total, losses = joint_step(accelerator.unwrap_model(model), batch, tcfg.tasks.active(),
                                   tcfg.label_smoothing)
    accelerator.backward(total)
    grad_norm = (accelerator.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
                 if tcfg.grad_clip else None)
    state.elapsed_s = time.perf_counter() - started
    lr = tcfg.lr * lr_factor(state.step, progress(state.step, state.elapsed_s, tcfg), tcfg)
    set_lr(optimizer, lr)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.samples += batch["size"]
    return total, losses, grad_norm, lr


def train(config: Config, run_dir: str | Path, *, resume: bool = False, show_progress: bool = True,
          on_checkpoint: Callable[[int, ImageTextModel], None] | None = None) -> TrainResult:
    run_dir, tcfg = Path(run_dir), config.train
    accelerator = Accelerator(mixed_precision=PRECISION[tcfg.precision])
    main = accelerator.is_main_process
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        check_resume_config(config, run_dir)
    save_config(config, run_dir / "config.yaml")
    set_seed(tcfg.seed)

    assets = prepare_assets(config, run_dir / "model", reuse=resume)
    model = build_model(assets.spec)
    optimizer = build_optimizer(model, tcfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    loader, sampler = build_loader(config, assets)

    state, log, ckpt_dir = TrainState(), MetricsLog(run_dir, enabled=main), run_dir / "checkpoints"
    if resume and (ckpt := latest_checkpoint(ckpt_dir)) is not None:
        state = TrainState(**load_checkpoint(ckpt, accelerator.unwrap_model(model), optimizer))
        log.truncate_after(state.step)
        accelerator.print(f"resumed from {ckpt} at step {state.step}")

    bar = tqdm(total=tcfg.max_steps, initial=state.step, disable=not (main and show_progress),
               desc="train", dynamic_ncols=True)
    window, started, stopped_by = Window(), time.perf_counter() - state.elapsed_s, "max_steps"
    model.train()
    for batch in batches(loader, sampler, state, config.data.max_bad_fraction):
        total, losses, grad_norm, lr = optimisation_step(accelerator, model, optimizer, batch,
                                                         tcfg, state, started)
        window.add(total, losses, grad_norm, batch["size"])
        bar.update(1)
        out_of_time = tcfg.max_minutes is not None and state.elapsed_s >= 60 * tcfg.max_minutes
        finished = state.step >= tcfg.max_steps or out_of_time
        if state.step % tcfg.log_every == 0 or finished:
            record = window.record(state, lr)
            log.log(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", sps=f"{record['samples_per_sec']:.0f}")
        if main and (state.step % tcfg.save_every == 0 or finished):
            save_checkpoint(ckpt_dir, accelerator.unwrap_model(model), optimizer, vars(state))
            prune(ckpt_dir, tcfg.keep_last)
            if on_checkpoint is not None:
                on_checkpoint(state.step, accelerator.unwrap_model(model))
        if finished:
            stopped_by = "max_steps" if state.step >= tcfg.max_steps else "max_minutes"
            break
    bar.close()
    log.close()

    model_dir = run_dir / "model"
    if main:
        accelerator.unwrap_model(model).save_pretrained(model_dir)
    return TrainResult(run_dir, model_dir, state.step, state.elapsed_s, state.samples,
                       state.skipped, stopped_by)
