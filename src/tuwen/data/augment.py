"""Training-time image augmentation: random resized crop, colour jitter, optional flip.

PIL and numpy only (no torchvision), following torchvision's definitions so that numbers
from papers carry over. Every random draw comes from the generator the caller passes in,
seeded per sample by ``image_rng(seed, epoch, index)``: a run, a resumed run and a run with
any number of loader workers all see the same crops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance

from tuwen.config import AugmentConfig
from tuwen.data.images import ImageTransform, resize_and_crop, to_rgb

Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels

# A fixed extra word in the seed keeps image draws independent of the dataset's
# caption/question draws, which are seeded by (seed, epoch, index) alone.
_IMAGE_STREAM = 1


def image_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for sample ``index`` of ``epoch``: fresh each epoch, same on resume."""
    return np.random.default_rng([seed, epoch, index, _IMAGE_STREAM])


@dataclass(frozen=True)
class RandomResizedCrop:
    """torchvision's RandomResizedCrop box: an area share in ``scale`` and an aspect ratio
    drawn log-uniformly from ``ratio``; after 10 misses, the largest centred box whose
    aspect fits ``ratio``."""

    scale: tuple[float, float] = (0.8, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self) -> None:
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"RandomResizedCrop scale must be 0 < low <= high <= 1, "
                             f"got {self.scale!r}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"RandomResizedCrop ratio must be 0 < low <= high, got {self.ratio!r}")

    def box(self, width: int, height: int, rng: np.random.Generator) -> Box:
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
            if w <= width and h <= height:
                left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
                return left, top, left + w, top + h
        return self._fallback(width, height)

    def _fallback(self, width: int, height: int) -> Box:
        w, h = float(width), float(height)
        if w / h < self.ratio[0]:
            h = w / self.ratio[0]
        elif w / h > self.ratio[1]:
            w = h * self.ratio[1]
        left, top = (width - w) / 2, (height - h) / 2
        return left, top, left + w, top + h

    def min_side(self, size: int) -> int:
        """Shorter image side at which even the smallest possible box still covers ``size``
        pixels: the smallest box side is sqrt(area share x aspect) of the shorter side."""
        squeeze = min(self.ratio[0], 1 / self.ratio[1], 1.0)
        return math.ceil(size / math.sqrt(self.scale[0] * squeeze))


@dataclass(frozen=True)
class ColorJitter:
    """torchvision's ColorJitter on PIL images: factors drawn uniformly from
    [max(0, 1 - x), 1 + x] (hue: a shift in [-hue, hue] of a full turn), applied in a
    random order. Brightness, contrast and saturation are PIL's ``ImageEnhance``."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    def __post_init__(self) -> None:
        if min(self.brightness, self.contrast, self.saturation, self.hue) < 0 or self.hue > 0.5:
            raise ValueError(f"ColorJitter strengths must be >= 0 and hue <= 0.5, got {self!r}")

    def sample(self, rng: np.random.Generator) -> list[tuple[str, float]]:
        """The operations to apply, in order, each with its factor."""
        ops = []
        for name in ("brightness", "contrast", "saturation"):
            if strength := getattr(self, name):
                ops.append((name, rng.uniform(max(0.0, 1 - strength), 1 + strength)))
        if self.hue:
            ops.append(("hue", rng.uniform(-self.hue, self.hue)))
        return [ops[i] for i in rng.permutation(len(ops))]

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        for name, factor in self.sample(rng):
            image = JITTERS[name](image, factor)
        return image


def adjust_hue(image: Image.Image, shift: float) -> Image.Image:
    """Turn every hue by ``shift`` of a full circle (0.5: red -> cyan), in PIL's 8-bit HSV.

    PIL stores hue h in [0, 1) as round(255 h), so the circle closes at 255 (torchvision
    wraps at 256, turning a little further than asked for negative shifts)."""
    hsv = np.array(image.convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(shift * 255)) % 255
    return Image.fromarray(hsv, "HSV").convert("RGB")


JITTERS = {
    "brightness": lambda image, f: ImageEnhance.Brightness(image).enhance(f),
    "contrast": lambda image, f: ImageEnhance.Contrast(image).enhance(f),
    "saturation": lambda image, f: ImageEnhance.Color(image).enhance(f),
    "hue": adjust_hue,
}


@dataclass(frozen=True)
class TrainTransform:
    """PIL image + per-sample generator -> normalised tensor (3, size, size).

    ``base`` fixes size and normalisation (shared with evaluation). Without ``crop`` the
    image is resized and centre-cropped as in evaluation. The crop box is resized straight
    to ``size`` (one bicubic pass over just the box). ``hflip`` mirrors half the images.
    """

    base: ImageTransform
    crop: RandomResizedCrop | None = None
    jitter: ColorJitter | None = None
    hflip: bool = False

    @property
    def min_side(self) -> int:
        """For ``load_image``: JPEGs may be decoded smaller, but never below this."""
        return self.crop.min_side(self.base.size) if self.crop else self.base.min_side

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        image, size = to_rgb(image), self.base.size
        if self.crop is not None:
            box = self.crop.box(*image.size, rng)
            image = image.resize((size, size), Image.Resampling.BICUBIC, box=box)
        else:
            image = resize_and_crop(image, size)
        if self.jitter is not None:
            image = self.jitter(image, rng)
        if self.hflip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return self.base.to_tensor(image)


def build_train_transform(augment: AugmentConfig | None, base: ImageTransform) -> TrainTransform:
    """``data.augment`` -> the training transform around the evaluation one."""
    if augment is None:
        return TrainTransform(base)
    crop = augment.random_resized_crop
    jitter = augment.color_jitter
    return TrainTransform(
        base,
        crop=RandomResizedCrop(crop.scale, crop.ratio) if crop is not None else None,
        jitter=ColorJitter(**jitter.model_dump()) if jitter is not None else None,
        hflip=augment.hflip)
