"""A frozen tower costs once: which towers' outputs are cached, the pass that fills the image
cache before the first step, and the log of what each epoch read.

``train.feature_cache: auto`` (the default) caches every frozen tower. The image cache
needs the same pixels every epoch, so it turns ``data.augment`` off and says so: a frozen
tower sees each image once, which is what makes it cheap; caching a fixed set of crops per
image would multiply the one pass by the number of variants (docs/pretrained.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from tuwen.config import Config
from tuwen.data.augment import build_train_transform
from tuwen.data.dataset import join_by_image
from tuwen.data.images import ImageTransform, load_image
from tuwen.errors import ConfigError, DataError
from tuwen.training.cache import FeatureCache, augmented, frozen_body
from tuwen.training.precision import autocast
from tuwen.training.text_cache import TextFeatureCache

logger = logging.getLogger(__name__)


def with_frozen_caches(config: Config) -> Config:
    """``train.feature_cache`` decided (``auto`` -> true when a tower is frozen), and
    ``data.augment`` off (logged) when the image tower's outputs are cached."""
    tcfg, model = config.train, config.model
    image, text = model.image_encoder.freeze, model.text_encoder.freeze
    if tcfg.feature_cache is False:
        return config
    if not (image or text):
        if tcfg.feature_cache is True:
            raise ConfigError("train.feature_cache: true needs a frozen tower "
                              "(model.image_encoder.freeze or model.text_encoder.freeze)")
        return _with(config, "train", feature_cache=False)
    config = _with(config, "train", feature_cache=True)
    if image and augmented(config):
        logger.warning("train.feature_cache: the frozen image tower's outputs are cached, so "
                       "data.augment is off (each image is encoded once; "
                       "set train.feature_cache: false to augment and encode every step)")
        config = _with(config, "data", augment=None)
    return config


def _with(config: Config, section: str, **update) -> Config:
    part = getattr(config, section).model_copy(update=update)
    return config.model_copy(update={section: part})


def text_body(model: nn.Module) -> nn.Module | None:
    """The text encoder's frozen body, or None if it trains."""
    tower = model.text_encoder
    body = tower.body() if hasattr(tower, "body") else tower
    return None if any(p.requires_grad for p in body.parameters()) else body


@dataclass
class Caches:
    """The cached towers of a run; counts what each epoch computed and read."""

    image: FeatureCache | None
    text: TextFeatureCache | None
    log: Callable[[str], None] = print
    epoch: int = 0
    totals: dict[str, int] = field(default_factory=dict)

    def describe(self, directory: Path) -> str:
        parts = [f"{name} tower ({len(c.store.index)} entries already there)"
                 for name, c in (("image", self.image), ("text", self.text)) if c is not None]
        return f"feature cache in {directory}: the frozen {' and '.join(parts)}"

    def take_counts(self, epoch: int | None = None) -> dict[str, int]:
        """Entries read (hits) and computed (misses) since the last call, for metrics.jsonl;
        at the first call of a new ``epoch``, one line on what the last epoch read (counted
        per log window: the window in which the epoch ended counts for it)."""
        counts: dict[str, int] = {}
        for cache in (self.image, self.text):
            if cache is not None:
                counts.update(cache.take_counts())
        for key, value in counts.items():  # a window across the boundary: the old epoch's
            self.totals[key] = self.totals.get(key, 0) + value
        if epoch is not None and epoch != self.epoch:
            self.log_epoch()
            self.epoch = epoch
        return counts

    def log_epoch(self) -> None:
        t = self.totals
        said = [f"{what}: {t.get(f'{pre}cache_hits', 0)} read from the cache, "
                f"{t.get(f'{pre}cache_misses', 0)} computed"
                for what, pre, cache in (("images", "", self.image),
                                         ("texts", "text_", self.text)) if cache is not None]
        self.log(f"feature cache, epoch {self.epoch}: {'; '.join(said)}")
        self.totals = {}

    def close(self) -> None:
        for cache in (self.image, self.text):
            if cache is not None:
                cache.close()


def make_caches(config: Config, model: nn.Module, run_dir: Path, pad_token_id: int,
                writer: str = "0", log: Callable[[str], None] = print) -> Caches | None:
    """The caches of the frozen towers, when ``train.feature_cache`` says so. ``config`` is
    the one the loader reads: ``with_frozen_caches`` has turned its augmentation off."""
    tcfg = config.train
    if not with_frozen_caches(config).train.feature_cache:
        return None
    directory = Path(tcfg.feature_cache_dir or run_dir / "feature_cache")
    image = frozen_body(model)
    if image is not None and augmented(config):
        raise ConfigError("train.feature_cache needs the same pixels every epoch; "
                          "set data.augment: null (augmentation changes them)")
    text = text_body(model)
    caches = Caches(
        FeatureCache(image, directory, tcfg.precision, writer) if image is not None else None,
        TextFeatureCache(text, directory, tcfg.precision, config.data.max_text_length,
                         pad_token_id, writer) if text is not None else None, log)
    log(caches.describe(directory))
    return caches


@torch.no_grad()
def precompute_images(caches: Caches, model: nn.Module, config: Config, spec, train,
                      device: torch.device, rank: int = 0, world_size: int = 1,
                      show_progress: bool = True) -> int:
    """Encode this process's share of the training images once, in batches, before the
    first step (the image tower's forward fills the cache). Returns the images computed."""
    if caches.image is None or train.streams:  # streamed shards: filled as they come
        return 0
    transform = build_train_transform(None, ImageTransform.for_model(spec))
    paths = [ex.image_path for ex in join_by_image(train.captions, train.questions,
                                                   train.conversations)
             if ex.image_path is not None]
    paths = paths[rank::world_size]
    size, before = config.train.batch_size, caches.image.misses
    was_training = model.image_encoder.training
    model.image_encoder.eval()
    bar = tqdm(total=len(paths), desc="feature cache", unit="img", disable=not show_progress)
    for start in range(0, len(paths), size):
        pixels = [_pixels(p, transform) for p in paths[start: start + size]]
        pixels = [p for p in pixels if p is not None]  # bad images: the loader counts them
        if pixels:
            with autocast(config.train.precision, device):
                model.image_encoder(torch.stack(pixels).to(device))
        bar.update(len(paths[start: start + size]))
    bar.close()
    model.image_encoder.train(was_training)
    computed = caches.image.misses - before
    caches.image.take_counts()  # the training log counts training's reads only
    caches.log(f"feature cache: {computed} of {len(paths)} training images encoded before "
               f"training, {len(paths) - computed} were cached already")
    return computed


def _pixels(path: Path, transform) -> torch.Tensor | None:
    try:
        return transform(load_image(path, transform.min_side), None)
    except DataError:
        return None
