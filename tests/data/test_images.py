"""Image loading (modes, orientation, broken files) and the tensor transform."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from tuwen.data.images import ImageTransform, load_image, resize_and_crop
from tuwen.errors import DataError

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _close(pixel: tuple[int, ...], expected: tuple[int, ...], tol: int = 12) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True))


def _two_halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue: shows both rotation and mirroring."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    return image


# --- load_image: modes --------------------------------------------------------------------


def test_rgb_png(tmp_path: Path) -> None:
    _two_halves(8, 4).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.mode == "RGB" and image.size == (8, 4)
    assert image.getpixel((0, 0)) == RED and image.getpixel((7, 3)) == BLUE


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (3, 1))
    image.putdata([(255, 0, 0, 255), (255, 0, 0, 0), (0, 0, 255, 128)])
    image.save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == RED
    assert loaded.getpixel((1, 0)) == WHITE
    assert _close(loaded.getpixel((2, 0)), (127, 127, 255), tol=1)


def test_grayscale_and_grayscale_alpha(tmp_path: Path) -> None:
    Image.new("L", (2, 2), 77).save(tmp_path / "l.png")
    assert load_image(tmp_path / "l.png").getpixel((1, 1)) == (77, 77, 77)
    Image.new("LA", (2, 2), (10, 0)).save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png").getpixel((0, 0)) == WHITE


def test_sixteen_bit_grayscale_keeps_its_range(tmp_path: Path) -> None:
    data = np.array([[0, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(data).save(tmp_path / "deep.png")
    loaded = load_image(tmp_path / "deep.png")
    assert [loaded.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), WHITE]


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    palette = _two_halves(4, 2).convert("P", palette=Image.Palette.ADAPTIVE, colors=2)
    palette.save(tmp_path / "p.png")
    loaded = load_image(tmp_path / "p.png")
    assert loaded.getpixel((0, 0)) == RED and loaded.getpixel((3, 1)) == BLUE
    transparent_index = palette.getpixel((0, 0))
    palette.save(tmp_path / "pt.png", transparency=transparent_index)
    loaded = load_image(tmp_path / "pt.png")
    assert loaded.getpixel((0, 0)) == WHITE and loaded.getpixel((3, 1)) == BLUE


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    loaded = load_image(tmp_path / "c.jpg")
    assert loaded.mode == "RGB" and _close(loaded.getpixel((1, 1)), RED, tol=20)


@pytest.mark.parametrize("orientation, top_left, size", [
    (1, RED, (40, 20)),   # as stored
    (6, RED, (20, 40)),   # stored lying on its side: turn 90 degrees clockwise to view
    (8, BLUE, (20, 40)),  # the other side: turn 90 degrees anticlockwise
    (3, BLUE, (40, 20)),  # upside down
])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int,
                                     top_left: tuple[int, int, int],
                                     size: tuple[int, int]) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    _two_halves(40, 20).save(tmp_path / "photo.jpg", exif=exif.tobytes(), quality=95)
    loaded = load_image(tmp_path / "photo.jpg")
    assert loaded.size == size
    assert _close(loaded.getpixel((2, 2)), top_left)
    far = (size[0] - 3, size[1] - 3)
    assert _close(loaded.getpixel(far), RED if top_left == BLUE else BLUE)


# --- load_image: broken files -------------------------------------------------------------


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image file not found") as err:
        load_image(tmp_path / "gone.png")
    assert str(tmp_path / "gone.png") in str(err.value)
    (tmp_path / "zero.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"zero\.jpg: image file is empty \(0 bytes\)"):
        load_image(tmp_path / "zero.jpg")
    with pytest.raises(DataError, match="found a directory"):
        load_image(tmp_path)


def test_truncated_jpeg_raises(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        load_image(tmp_path / "cut.jpg")
    assert str(tmp_path / "cut.jpg") in str(err.value)
    assert "\n" not in str(err.value)


def test_truncated_png_raises(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[:300])
    with pytest.raises(DataError, match=r"cut\.png"):
        load_image(tmp_path / "cut.png")


def test_undecodable_file_raises(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("these are not pixels")
    with pytest.raises(DataError, match=r"notes\.jpg: not a recognised image format"):
        load_image(tmp_path / "notes.jpg")


def test_truncated_images_are_not_tolerated_globally() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- ImageTransform -----------------------------------------------------------------------


def test_transform_shape_dtype_and_values() -> None:
    out = ImageTransform(16)(Image.new("RGB", (30, 20), (255, 0, 128)))
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert torch.allclose(out[0], torch.ones(16, 16))
    assert torch.allclose(out[1], -torch.ones(16, 16))
    assert torch.allclose(out[2], torch.full((16, 16), 128 / 255 * 2 - 1), atol=1e-6)


def test_transform_custom_mean_std() -> None:
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    out = ImageTransform(4, mean=mean, std=std)(Image.new("RGB", (4, 4), (51, 102, 204)))
    expected = [(v / 255 - m) / s for v, m, s in zip((51, 102, 204), mean, std, strict=True)]
    assert torch.allclose(out[:, 0, 0], torch.tensor(expected), atol=1e-5)


def test_transform_already_sized_is_exact() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = ImageTransform(8)(Image.fromarray(pixels))
    expected = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 * 2 - 1
    assert torch.allclose(out, expected, atol=1e-6)


def test_centre_crop_keeps_the_middle() -> None:
    image = Image.new("RGB", (30, 10), RED)
    image.paste((0, 255, 0), (10, 0, 20, 10))  # the middle third is green
    cropped = resize_and_crop(image, 10)
    assert cropped.size == (10, 10)
    assert set(cropped.getdata()) == {(0, 255, 0)}


def test_resize_shorter_side_then_crop() -> None:
    tall = Image.new("RGB", (20, 40), RED)
    tall.paste(BLUE, (0, 15, 20, 25))  # a blue band across the middle
    cropped = resize_and_crop(tall, 10)  # -> 10 x 20, then rows 5..15
    assert cropped.size == (10, 10)
    assert _close(cropped.getpixel((5, 5)), BLUE)
    assert _close(cropped.getpixel((5, 0)), RED, tol=40)  # bicubic blurs the edge a little


def test_transform_converts_other_modes() -> None:
    out = ImageTransform(4)(Image.new("L", (4, 4), 255))
    assert torch.allclose(out, torch.ones(3, 4, 4))


def test_transform_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="positive integer"):
        ImageTransform(0)
    with pytest.raises(ValueError, match="3 values"):
        ImageTransform(8, mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="std must be positive"):
        ImageTransform(8, std=(0.5, 0.0, 0.5))


def test_transform_output_is_contiguous_float32() -> None:
    out = ImageTransform(8)(Image.new("RGB", (12, 9), (10, 20, 30)))
    assert out.is_contiguous() and out.dtype == torch.float32


def test_transform_accepts_and_ignores_an_rng() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8))
    a = ImageTransform(16)(image, np.random.default_rng(1))
    assert torch.equal(a, ImageTransform(16)(image, np.random.default_rng(2)))
    assert torch.equal(a, ImageTransform(16)(image))


def test_transform_for_model_takes_the_encoders_statistics() -> None:
    from dataclasses import replace

    from tiny import tiny_spec

    spec = replace(tiny_spec(), image_mean=(0.1, 0.2, 0.3), image_std=(0.4, 0.5, 0.6))
    transform = ImageTransform.for_model(spec)
    assert transform == ImageTransform(spec.image_size, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert transform.min_side == spec.image_size


@pytest.mark.parametrize("width, height", [(50, 37), (37, 50), (41, 41), (90, 33)])
def test_transform_matches_hugging_face_clip_processor(width: int, height: int) -> None:
    """Same resize (shorter side, bicubic, longer side rounded down), crop and normalisation
    as transformers' CLIPImageProcessor, to float rounding."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    rng = np.random.default_rng(width * height)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    processor = CLIPImageProcessorPil(size={"shortest_edge": 24},
                                      crop_size={"height": 24, "width": 24})
    reference = torch.from_numpy(processor(image)["pixel_values"][0])
    ours = ImageTransform(24, mean, std)(image)
    assert ours.shape == reference.shape == (3, 24, 24)
    assert torch.allclose(ours, reference, atol=1e-5)


# --- JPEG draft decoding --------------------------------------------------------------------


def _photo_jpeg(path: Path, size: tuple[int, int], **save) -> Path:
    image = _two_halves(*size)
    image.save(path, quality=92, **save)
    return path


@pytest.mark.parametrize("min_side, expected", [
    (None, (640, 480)),   # no hint: full size
    (224, (320, 240)),    # 1/2 keeps the shorter side >= 224; 1/4 (120) would not
    (100, (160, 120)),    # 1/4
    (50, (80, 60)),       # 1/8, libjpeg's smallest scale
    (300, (640, 480)),    # 1/2 would give 240 < 300
    (480, (640, 480)),
])
def test_jpeg_draft_never_goes_below_min_side(tmp_path: Path, min_side, expected) -> None:
    path = _photo_jpeg(tmp_path / "big.jpg", (640, 480))
    loaded = load_image(path, min_side=min_side)
    assert loaded.size == expected and loaded.mode == "RGB"
    assert _close(loaded.getpixel((2, 2)), RED) and _close(loaded.getpixel(
        (expected[0] - 3, expected[1] - 3)), BLUE)


def test_jpeg_draft_with_exif_rotation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # turned 90 degrees clockwise to view: red ends up on top
    path = _photo_jpeg(tmp_path / "turned.jpg", (640, 480), exif=exif.tobytes())
    loaded = load_image(path, min_side=224)
    assert loaded.size == (240, 320)
    assert _close(loaded.getpixel((120, 5)), RED) and _close(loaded.getpixel((120, 314)), BLUE)


def test_draft_leaves_other_formats_alone(tmp_path: Path) -> None:
    _two_halves(640, 480).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png", min_side=100).size == (640, 480)


def test_drafted_transform_stays_close_to_the_full_decode(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    photo = Image.fromarray(coarse).resize((640, 480), Image.Resampling.BICUBIC)
    photo.save(tmp_path / "photo.jpg", quality=90)
    transform = ImageTransform(64)
    full = transform(load_image(tmp_path / "photo.jpg"))
    fast = transform(load_image(tmp_path / "photo.jpg", min_side=transform.min_side))
    # a quarter-size decode of a smooth photo: differences of a grey level or two
    assert (full - fast).abs().mean() < 2 * 2 / 255


def test_truncated_jpeg_raises_with_draft_too(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg: image data is truncated or corrupt"):
        load_image(tmp_path / "cut.jpg", min_side=100)
