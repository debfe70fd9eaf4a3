"""Periodic validation during training (every ``train.eval_every`` steps).

On a fixed subset of the validation split (``train.val_max_images`` images, the same
captions and questions every time): the joint loss and each task's loss, greedy captions
for the caption-collapse monitor, and whatever task metrics the caller's ``evaluate``
callback returns (apps wire evaluation in; training does not import it). Runs under a forked
RNG, so validating does not change the training run's random stream. ``validate`` is the
loop's side: log the record and tell whether ``train.best_metric`` improved.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tuwen.config import Config, TrainConfig
from tuwen.data.batch import Batch
from tuwen.data.dataset import Collator, JointDataset, join_by_image
from tuwen.data.images import ImageTransform
from tuwen.data.prepare import read_split
from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks import captioning
from tuwen.tasks.batching import decode_until_eos
from tuwen.tasks.table import joint_step, part_collates, task_options
from tuwen.training.assets import Assets
from tuwen.training.checkpoint import read_best
from tuwen.training.distributed import any_rank
from tuwen.training.loaders import text_tools
from tuwen.training.metrics_log import MetricsLog
from tuwen.training.monitor import caption_diversity, collapse_warning
from tuwen.training.optim import task_weights
from tuwen.training.parts import Parts, train_mode
from tuwen.training.precision import autocast
from tuwen.training.state import TrainState

Evaluate = Callable[[ImageTextModel, int], dict]
CAPTION_IMAGES = 64  # greedy captions generated per validation for the collapse monitor


class CollapseWarning(UserWarning):
    """The model gives (nearly) the same caption for every validation image."""


def flatten(tree: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def validation_batches(config: Config, assets: Assets) -> list[Batch]:
    """The validation subset, collated once (it is small and fixed)."""
    data, tcfg = config.data, config.train
    split = read_split(data, data.val_split)
    examples = join_by_image(split.captions, split.questions,
                             split.conversations)[: tcfg.val_max_images]
    dataset = JointDataset(examples, ImageTransform(data.image_size, data.image_mean,
                                                    data.image_std),
                           seed=tcfg.seed, captions_per_image=data.captions_per_image,
                           questions_per_image=data.questions_per_image)
    tools = text_tools(config, assets)
    collate = Collator(tools, part_collates(tools, config, assets.spec, None))
    size = tcfg.batch_size
    batches = [collate([dataset[i] for i in range(s, min(s + size, len(dataset)))])
               for s in range(0, len(dataset), size)]
    return [b for b in batches if b.size]


@dataclass
class Validation:
    batches: list[Batch]
    tokenizer: object
    config: Config
    evaluate: Evaluate | None = None
    options: dict = field(default_factory=dict)  # every task's options (tasks.table)

    def run(self, model: ImageTextModel, step: int, weights: dict[str, float],
            device: torch.device) -> dict:
        """Validation record for ``step`` (keys ``val_*``); leaves the model in eval mode."""
        model.eval()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self.config.train.seed)
            record = self.losses(model, weights, device)
            record.update(self.collapse(model, device))
        if self.evaluate is not None:
            record.update({f"val_{k}": v for k, v in flatten(self.evaluate(model, step)).items()})
        return {"step": step, **record}

    def losses(self, model: ImageTextModel, weights: dict[str, float],
               device: torch.device) -> dict[str, float]:
        sums: dict[str, float] = {}
        for batch in self.batches:
            with autocast(self.config.train.precision, device):
                total, losses = joint_step(model, batch.to(device), weights, self.options)
            for name, value in {"loss": total, **{f"loss_{k}": v for k, v in losses.items()}
                                }.items():
                sums[f"val_{name}"] = sums.get(f"val_{name}", 0.0) + value.item()
        return {k: v / len(self.batches) for k, v in sums.items()}

    def collapse(self, model: ImageTextModel, device: torch.device) -> dict[str, float]:
        if self.batches[0].captions is None:
            return {}
        pixels = torch.cat([b.pixel_values for b in self.batches
                            if b.pixel_values is not None])[:CAPTION_IMAGES]
        ids = captioning.predict_step(model, pixels.to(device), decoding="greedy",
                                      max_new_tokens=self.config.eval.max_new_tokens)
        captions = decode_until_eos(self.tokenizer, ids, model.spec.eos_token_id)
        stats = caption_diversity(captions)
        message = collapse_warning(stats, len(captions), self.config.train.collapse_share)
        if message is not None:
            tqdm.write(f"warning: {message}")
            warnings.warn(message, CollapseWarning, stacklevel=2)
        return {f"val_caption_{k}": v for k, v in stats.items()}


def make_validation(config: Config, assets: Assets, evaluate: Evaluate | None) -> Validation | None:
    if config.train.eval_every is None:
        return None
    batches = validation_batches(config, assets)
    if not batches:
        warnings.warn(f"validation split {config.data.val_split!r} has no usable images; "
                      "periodic validation is off", stacklevel=2)
        return None
    return Validation(batches, assets.tokenizer, config, evaluate, task_options(config))


def is_better(value: float, best: dict | None, mode: str) -> bool:
    if best is None:
        return True
    return value < best["value"] if mode == "min" else value > best["value"]


def best_mode(metric: str, mode: str | None) -> str:
    return mode or ("min" if "loss" in metric else "max")


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
