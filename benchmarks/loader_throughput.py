"""Decode + preprocess throughput of tuwen's image pipeline against Hugging Face's.

Writes N photo-like JPEGs the way COCO stores them (drawn large, e.g. 500x375, then
downscaled and saved at quality 90), then times a DataLoader over the same files with
1 and 2 worker processes for:

  tuwen eval    load_image (+ JPEG draft decoding) -> resize shorter side, centre crop, normalise
  tuwen train   the same load -> random resized crop -> colour jitter -> normalise
  hf clip       PIL open + convert("RGB") -> transformers' CLIPImageProcessor (PIL backend)

and prints, as the median of --repeats runs: images/s in total and per worker (wall clock,
timed from the first batch, so worker start-up is not counted), the ratio of tuwen to Hugging
Face, and images per CPU-second inside a worker (what one worker does with a core to itself:
on a machine shared with other jobs, the wall-clock rates fall and this one does not).
Run:  .venv/bin/python benchmarks/loader_throughput.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from tuwen.config import AugmentConfig
from tuwen.data.augment import build_train_transform, image_rng
from tuwen.data.images import ImageTransform, load_image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------- test images

def synthetic_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth colour field, a dozen overlapping shapes, optical blur, surface texture and
    sensor grain. Flat synthetic images compress to a third of a photo's JPEG size and
    decode faster than photos; these land near real ones (~0.5 bytes/pixel at quality 90)."""
    field = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    image = Image.fromarray(field).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(8, 16))):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(width // 10, width // 2), rng.integers(height // 10, height // 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (int(x0), int(y0), int(x0 + w), int(y0 + h))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour, outline=(0, 0, 0), width=2)
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    coarse = rng.normal(0, 30, (height // 3, width // 3)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    grain = rng.normal(0, 7, (height, width, 3))
    pixels = np.asarray(image) + texture[..., None] + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_jpegs(folder: Path, n: int, original: tuple[int, int], short_side: int,
                seed: int = 0) -> list[Path]:
    """``n`` JPEGs drawn at ``original`` size, downscaled so the shorter side is
    ``short_side`` (0: kept as drawn), saved at quality 90."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in tqdm(range(n), desc="writing JPEGs", file=sys.stderr):
        image = synthetic_photo(rng, *original)
        if short_side:
            scale = short_side / min(original)
            size = (round(original[0] * scale), round(original[1] * scale))
            image = image.resize(size, Image.Resampling.LANCZOS)
        path = folder / f"{i:06d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- pipelines

class TuwenEval:
    def __init__(self, size: int) -> None:
        self.transform = ImageTransform(size, CLIP_MEAN, CLIP_STD)

    def __call__(self, path: Path, index: int) -> torch.Tensor:
        return self.transform(load_image(path, min_side=self.transform.min_side))


class TuwenTrain:
    def __init__(self, size: int) -> None:
        self.transform = build_train_transform(AugmentConfig(),
                                               ImageTransform(size, CLIP_MEAN, CLIP_STD))

    def __call__(self, path: Path, index: int) -> torch.Tensor:
        image = load_image(path, min_side=self.transform.min_side)
        return self.transform(image, image_rng(0, 0, index))


class HFClip:
    def __init__(self, size: int) -> None:
        # The PIL backend is what CLIPImageProcessor falls back to without torchvision;
        # importing it directly only silences that warning.
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        self.processor = CLIPImageProcessorPil(size={"shortest_edge": size},
                                               crop_size={"height": size, "width": size})

    def __call__(self, path: Path, index: int) -> torch.Tensor:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        return torch.from_numpy(self.processor(rgb)["pixel_values"][0])


PIPELINES: dict[str, Callable[[int], Callable]] = {
    "tuwen eval": TuwenEval, "tuwen train": TuwenTrain, "hf clip": HFClip}


class Files(Dataset):
    def __init__(self, paths: list[Path], fn: Callable[[Path, int], torch.Tensor]) -> None:
        self.paths, self.fn = paths, fn

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, float]:
        start = time.thread_time()  # workers run torch single-threaded: this is all the work
        pixels = self.fn(self.paths[index], index)
        return pixels, time.thread_time() - start


# ---------------------------------------------------------------- timing

def images_per_second(paths: list[Path], fn: Callable, workers: int,
                      batch_size: int) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU-second of decode + preprocess)."""
    loader = DataLoader(Files(paths, fn), batch_size=batch_size, num_workers=workers,
                        prefetch_factor=2 if workers else None)
    counted, cpu, start = 0, 0.0, None
    for pixels, seconds in loader:
        if start is None:  # the first batch pays for worker start-up: not counted
            start = time.perf_counter()
            continue
        counted, cpu = counted + len(pixels), cpu + float(seconds.sum())
    return counted / (time.perf_counter() - start), counted / cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=384, help="number of JPEGs")
    parser.add_argument("--size", type=int, default=224, help="model input size")
    parser.add_argument("--original", default="500x375", help="size the photos are drawn at")
    parser.add_argument("--short-side", type=int, default=224,
                        help="stored shorter side (0: store at --original size)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (median)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pipelines", default=",".join(PIPELINES))
    parser.add_argument("--dir", help="where to write the JPEGs (default: a temporary folder)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    original = tuple(int(v) for v in args.original.lower().split("x"))
    workers = [int(w) for w in args.workers.split(",")]
    names = args.pipelines.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(args.dir or tmp), args.n, original, args.short_side)
        with Image.open(paths[0]) as first:
            stored = first.size
        kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        print(f"{len(paths)} JPEGs {stored[0]}x{stored[1]} (drawn {original[0]}x{original[1]}, "
              f"quality 90, {kb:.0f} KiB each) -> {args.size}x{args.size}; "
              f"median of {args.repeats} runs\n")
        results = run_all(paths, names, workers, args)
    report(results, names, workers)


def run_all(paths: list[Path], names: list[str], workers: list[int],
            args: argparse.Namespace) -> dict[tuple[str, int], tuple[float, float]]:
    runs: dict[tuple[str, int], list[tuple[float, float]]] = {}
    settings = [(name, w) for w in workers for name in names]
    with tqdm(total=len(settings) * args.repeats, desc="timing", file=sys.stderr) as bar:
        for _ in range(args.repeats):  # interleaved, so machine load hits every setting alike
            for name, w in settings:
                fn = PIPELINES[name](args.size)
                runs.setdefault((name, w), []).append(
                    images_per_second(paths, fn, w, args.batch_size))
                bar.update()
    return {key: (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values))
            for key, values in runs.items()}


def report(results: dict[tuple[str, int], tuple[float, float]], names: list[str],
           workers: list[int]) -> None:
    print(f"{'pipeline':<14}{'workers':>8}{'images/s':>11}{'per worker':>12}{'vs hf clip':>12}"
          f"{'per CPU-s':>11}")
    for w in workers:
        for name in names:
            rate, cpu_rate = results[(name, w)]
            peer = results.get(("hf clip", w))
            ratio = f"{rate / peer[0]:.2f}x" if peer else "-"
            print(f"{name:<14}{w:>8}{rate:>11.0f}{rate / w:>12.0f}{ratio:>12}{cpu_rate:>11.0f}")


if __name__ == "__main__":
    main()
