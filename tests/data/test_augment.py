"""Training augmentation: crop boxes, colour jitter, flips, seeding, config wiring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from tuwen.config import config_from_dict
from tuwen.data.augment import (
    ColorJitter,
    RandomResizedCrop,
    TrainTransform,
    adjust_hue,
    build_train_transform,
    image_rng,
)
from tuwen.data.images import ImageTransform

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _two_halves(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    return image


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# --- seeding --------------------------------------------------------------------------------


def test_image_rng_is_per_sample_and_per_epoch() -> None:
    draw = lambda *key: image_rng(*key).random()  # noqa: E731
    assert draw(0, 0, 5) == draw(0, 0, 5)
    assert len({draw(0, 0, 5), draw(0, 1, 5), draw(0, 0, 6), draw(1, 0, 5)}) == 4
    # independent of the dataset's caption draws, seeded by (seed, epoch, index)
    assert draw(0, 0, 5) != np.random.default_rng([0, 0, 5]).random()


# --- random resized crop --------------------------------------------------------------------


def test_crop_box_whole_image_when_scale_and_ratio_are_one() -> None:
    crop = RandomResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert crop.box(40, 40, np.random.default_rng(0)) == pytest.approx((0, 0, 40, 40))


def test_crop_box_falls_back_to_the_centre() -> None:
    # a 1:1 box of the full 60x40 area (49x49) never fits, so after 10 tries the largest
    # centred box of aspect 1 is taken: 40x40 starting at x = 10
    crop = RandomResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert crop.box(60, 40, np.random.default_rng(0)) == pytest.approx((10, 0, 50, 40))
    tall = RandomResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert tall.box(20, 50, np.random.default_rng(0)) == pytest.approx((0, 15, 20, 35))


def test_crop_boxes_respect_scale_ratio_and_bounds() -> None:
    crop = RandomResizedCrop(scale=(0.5, 0.9), ratio=(0.75, 4 / 3))
    rng = np.random.default_rng(0)
    lefts = []
    for _ in range(300):
        left, top, right, bottom = crop.box(300, 200, rng)
        w, h = right - left, bottom - top
        assert 0 <= left and 0 <= top and right <= 300 + 1e-9 and bottom <= 200 + 1e-9
        assert 0.5 - 1e-9 <= w * h / 60000 <= 0.9 + 1e-9
        assert 0.75 - 1e-9 <= w / h <= 4 / 3 + 1e-9
        lefts.append(left)
    assert np.std(lefts) > 5  # positions really vary


def test_crop_min_side_guarantees_full_resolution() -> None:
    crop = RandomResizedCrop(scale=(0.8, 1.0), ratio=(0.75, 4 / 3))
    assert crop.min_side(224) == math.ceil(224 / math.sqrt(0.8 * 0.75)) == 290
    rng = np.random.default_rng(1)
    for width, height in [(290, 290), (290, 500), (700, 290)]:
        for _ in range(200):
            left, top, right, bottom = crop.box(width, height, rng)
            assert min(right - left, bottom - top) >= 224 - 1e-9


def test_crop_rejects_bad_ranges() -> None:
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="ratio"):
        RandomResizedCrop(ratio=(2.0, 1.0))


# --- colour jitter --------------------------------------------------------------------------


def test_jitter_operations_hand_checked() -> None:
    from tuwen.data.augment import JITTERS

    plain = Image.new("RGB", (4, 4), (100, 50, 20))
    assert JITTERS["brightness"](plain, 1.5).getpixel((0, 0)) == (150, 75, 30)
    assert JITTERS["brightness"](plain, 0.0).getpixel((0, 0)) == (0, 0, 0)
    two_tone = Image.new("RGB", (4, 2), (200, 200, 200))
    two_tone.paste((0, 0, 0), (0, 0, 4, 1))  # grey mean 100
    flat = JITTERS["contrast"](two_tone, 0.0)
    assert set(flat.getdata()) == {(100, 100, 100)}
    grey = JITTERS["saturation"](Image.new("RGB", (2, 2), RED), 0.0)
    assert grey.getpixel((0, 0)) == (76, 76, 76)  # ITU-R 601 luma: 0.299 * 255
    assert JITTERS["saturation"](plain, 1.0).getpixel((0, 0)) == (100, 50, 20)


@pytest.mark.parametrize("shift, expected", [(0.5, (0, 255, 255)), (1 / 3, (0, 255, 0)),
                                             (-1 / 3, (0, 0, 255)), (0.0, RED)])
def test_adjust_hue_turns_the_colour_wheel(shift: float, expected) -> None:
    out = adjust_hue(Image.new("RGB", (2, 2), RED), shift).getpixel((0, 0))
    assert all(abs(a - b) <= 3 for a, b in zip(out, expected)), out


def test_jitter_samples_in_range_and_random_order() -> None:
    jitter = ColorJitter(brightness=0.2, contrast=0.5, saturation=0.0, hue=0.1)
    orders = set()
    for seed in range(40):
        ops = dict(jitter.sample(np.random.default_rng(seed)))
        assert set(ops) == {"brightness", "contrast", "hue"}  # zero strength: not drawn
        assert 0.8 <= ops["brightness"] <= 1.2 and 0.5 <= ops["contrast"] <= 1.5
        assert -0.1 <= ops["hue"] <= 0.1
        orders.add(tuple(name for name, _ in jitter.sample(np.random.default_rng(seed))))
    assert len(orders) == 6  # all orders of three operations occur


def test_jitter_rejects_bad_strengths() -> None:
    with pytest.raises(ValueError, match="hue <= 0.5"):
        ColorJitter(hue=0.6)
    with pytest.raises(ValueError, match=">= 0"):
        ColorJitter(brightness=-0.1)


# --- the training transform -----------------------------------------------------------------


def test_plain_train_transform_equals_evaluation() -> None:
    base = ImageTransform(16, (0.4, 0.5, 0.6), (0.2, 0.3, 0.4))
    image = _noise(30, 20)
    out = TrainTransform(base)(image, np.random.default_rng(0))
    assert torch.equal(out, base(image))


def test_train_transform_is_reproducible_and_varies_by_seed() -> None:
    transform = TrainTransform(ImageTransform(24), RandomResizedCrop((0.5, 1.0)),
                               ColorJitter(0.3, 0.3, 0.3, 0.05))
    image = _noise(40, 30)
    a = transform(image, image_rng(0, 0, 1))
    assert a.shape == (3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, transform(image, image_rng(0, 0, 1)))
    assert not torch.equal(a, transform(image, image_rng(0, 1, 1)))
    assert a.min() >= -1 and a.max() <= 1


def test_crop_resizes_the_box_to_the_output_size() -> None:
    # a tiny scale range: the box is a 10x10 square of a 100x100 image, 10 pixels from the
    # red/blue border at most, so the output is wholly red or wholly blue
    image = Image.new("RGB", (100, 100), RED)
    transform = TrainTransform(ImageTransform(8), RandomResizedCrop((0.01, 0.01), (1.0, 1.0)))
    out = transform(image, np.random.default_rng(0))
    assert torch.allclose(out[0], torch.ones(8, 8)) and torch.allclose(out[2], -torch.ones(8, 8))


def test_no_flip_by_default_and_flips_half_when_on() -> None:
    image = _two_halves(16, 16)
    base = ImageTransform(16)
    default = build_train_transform(config_from_dict({}).data.augment, base)
    assert default.hflip is False
    for seed in range(20):  # red stays on the left under the default augmentation
        out = default(image, np.random.default_rng(seed))
        assert out[0, :, :6].mean() > out[0, :, 10:].mean() + 1
    flipping = TrainTransform(base, hflip=True)
    red_right = [flipping(image, np.random.default_rng(s))[0, 8, 15].item() > 0
                 for s in range(40)]
    assert 10 < sum(red_right) < 30


def test_build_train_transform_from_config() -> None:
    base = ImageTransform(32)
    default = build_train_transform(config_from_dict({}).data.augment, base)
    assert default.crop == RandomResizedCrop((0.8, 1.0), (0.75, 4 / 3))
    assert default.jitter == ColorJitter(0.2, 0.2, 0.2, 0.0)
    assert default.min_side == math.ceil(32 / math.sqrt(0.6))
    config = config_from_dict({"data": {"augment": {
        "random_resized_crop": {"scale": [0.5, 1.0], "ratio": [1.0, 1.0]},
        "color_jitter": None, "hflip": True}}})
    custom = build_train_transform(config.data.augment, base)
    assert custom == TrainTransform(base, RandomResizedCrop((0.5, 1.0), (1.0, 1.0)), None, True)
    off = build_train_transform(config_from_dict({"data": {"augment": None}}).data.augment, base)
    assert off == TrainTransform(base) and off.min_side == 32


def test_augment_config_errors_name_the_key() -> None:
    from tuwen.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data\.augment\.random_resized_crop: .*scale"):
        config_from_dict({"data": {"augment": {"random_resized_crop": {"scale": [0.9, 0.5]}}}})
    with pytest.raises(ConfigError, match=r"data\.augment\.color_jitter\.hue"):
        config_from_dict({"data": {"augment": {"color_jitter": {"hue": 0.7}}}})
    with pytest.raises(ConfigError, match=r"data\.augment\.flip: unknown key"):
        config_from_dict({"data": {"augment": {"flip": True}}})
