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
