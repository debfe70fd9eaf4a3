"""Caption collapse caught without asking: greedy captions for a few fixed images every
``train.caption_check_every`` steps (and at the last step) when no validation runs.

A run without ``train.eval_every`` never validates, so a decoder that says "a." for every
image would go unnoticed until ``tuwen eval``. This check costs one greedy decode of
``train.caption_check_images`` images (held-out ones from ``data.val_split``, or training
images when that split has none). A collapse (``monitor.collapse_verdict``) is written to
the log and the progress bar; every check is a line of ``RUN/caption_checks.jsonl``
(``check_*`` keys), which the evaluation report shows. Checks before the end of the warmup
do not warn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tuwen.config import Config
from tuwen.data.dataset import join_by_image
from tuwen.data.images import ImageTransform, load_image
from tuwen.data.prepare import read_split
from tuwen.errors import TuwenError
from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks import captioning
from tuwen.tasks.batching import decode_until_eos
from tuwen.training.assets import Assets
from tuwen.training.monitor import collapse_verdict, distinct_share

CHECKS_FILE = "caption_checks.jsonl"


@dataclass
class CaptionCheck:
    pixels: torch.Tensor       # (N, 3, H, W) the fixed images
    source: str                # where they come from, for the log
    tokenizer: object
    config: Config
    path: Path                 # RUN/caption_checks.jsonl

    def due(self, step: int, last: bool) -> bool:
        every = self.config.train.caption_check_every
        return last or step % every == 0

    @torch.no_grad()
    def captions(self, model: ImageTextModel, device: torch.device) -> list[str]:
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[]):
            ids = captioning.predict_step(model, self.pixels.to(device), decoding="greedy",
                                          max_new_tokens=self.config.eval.max_new_tokens)
        model.train(was_training)
        return decode_until_eos(self.tokenizer, ids, model.spec.eos_token_id)

    def run(self, model: ImageTextModel, device: torch.device,
            step: int) -> tuple[dict, str | None]:
        """(the ``check_*`` record for metrics.jsonl, a collapse warning or None)."""
        captions = self.captions(model, device)
        tcfg = self.config.train
        verdict = collapse_verdict(captions, tcfg.collapse_share, tcfg.collapse_distinct)
        top = max(captions.count(c) for c in set(captions)) / len(captions)
        record = {"step": step, "check_distinct_share": distinct_share(captions),
                  "check_most_common_share": top, "check_collapsed": float(verdict is not None),
                  "check_example": captions[0]}
        warn = verdict if verdict is not None and step >= tcfg.warmup_steps else None
        return record, warn


def check_images(config: Config, assets: Assets) -> tuple[list, str]:
    """The images the check captions: held-out ones when the validation split has any."""
    n = config.train.caption_check_images
    try:
        val = read_split(config.data, config.data.val_split)
        held_out = join_by_image(val.captions, val.questions)[:n]
    except TuwenError:  # no such split in the data: training images serve
        held_out = []
    if held_out:
        return [ex.image_path for ex in held_out], f"{config.data.val_split} split"
    train = join_by_image(assets.train.captions, assets.train.questions)
    return ([ex.image_path for ex in train[:n]],
            f"{config.data.train_split} split (no held-out images)")


def make_caption_check(config: Config, assets: Assets, run_dir: Path) -> CaptionCheck | None:
    """The check, unless validation runs (it checks collapse itself), it is off, or the run
    trains no captioning."""
    tcfg = config.train
    if tcfg.eval_every is not None or tcfg.caption_check_every is None:
        return None
    if tcfg.tasks.get("caption", 0) <= 0 and not tcfg.task_schedule:  # resolved by the run
        return None
    paths, source = check_images(config, assets)
    transform = ImageTransform.for_model(assets.spec)
    pixels = []
    for path in paths:
        try:
            pixels.append(transform(load_image(path, transform.min_side)))
        except TuwenError:
            continue
    if len(pixels) < 2:
        return None
    return CaptionCheck(torch.stack(pixels), source, assets.tokenizer, config,
                        Path(run_dir) / CHECKS_FILE)


def check_captions(check: CaptionCheck | None, model: ImageTextModel, device: torch.device,
                   step: int, last: bool, progress) -> None:
    """The loop's hook: the check when due, its record written, a collapse shown."""
    if check is None or not check.due(step, last):
        return
    record, warning = check.run(model, device, step)
    with check.path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    progress.note("captions", f"{record['check_distinct_share']:.0%} distinct"
                  + (" COLLAPSED" if warning else ""))
    if warning is not None:
        tqdm.write(f"warning: step {step}: {warning} on {len(check.pixels)} images of the "
                   f"{check.source}")
