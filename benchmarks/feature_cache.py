"""Epoch time with and without the frozen-feature cache (train.feature_cache).

A frozen ViT-sized image encoder (a Hugging Face ViT built from a config: hidden 384,
6 layers, 6 heads, 224-px images, 196 patches; random weights, nothing downloaded) under
small trainable towers, on shapes data drawn at 224 px; ``--vit base`` for ViT-B/16 (768,
12 layers). Two runs of the same steps: ``train.feature_cache: false`` and ``true``; each
epoch is timed (wall clock and this process's CPU time) at the checkpoint that ends it.
The cache's first epoch computes and stores the encoder outputs; later epochs read them
from the memory-mapped files and skip the encoder.
The trainable side is kept small (hidden 64, one layer per tower, one caption and one
question per image), as when heads are trained on a frozen backbone; decoding the PNGs and
the trainable part are what remains, so the ratio grows with the encoder's size.

  .venv/bin/python benchmarks/feature_cache.py            # 256 images, 2 epochs
  .venv/bin/python benchmarks/feature_cache.py --images 512 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from tuwen.config import load_config
from tuwen.data.shapes import generate_shapes
from tuwen.training.loop import train

VITS = {  # Hugging Face ViT configs (random weights): ViT-S/16 at half depth, and ViT-B/16
    "small": "{model_type: vit, hidden_size: 384, num_hidden_layers: 6, num_attention_heads: 6, "
             "intermediate_size: 1536, image_size: 224, patch_size: 16}",
    "base": "{model_type: vit, hidden_size: 768, num_hidden_layers: 12, "
            "num_attention_heads: 12, intermediate_size: 3072, image_size: 224, patch_size: 16}"}


def overrides(data: Path, images: int, batch: int, epochs: int, cache: bool,
              vit: str = "small") -> list[str]:
    steps = images // batch
    # One caption and one question per image: the trainable side is small next to the
    # encoder, as when heads are trained on a frozen backbone.
    return [f"data.root={data}", "data.image_size=224", "data.augment=null",
            "data.tokenizer.vocab_size=300", "data.captions_per_image=1",
            "data.questions_per_image=1", "model.hidden_size=64", "model.embed_dim=64",
            "model.image_encoder={type: hf, freeze: true, hf_config: " + VITS[vit] + "}",
            "model.text_encoder.layers=1", "model.fusion.layers=1", "model.decoder.layers=1",
            f"train.batch_size={batch}", f"train.max_steps={steps * epochs}",
            f"train.log_every={steps}", f"train.save_every={steps}",
            "train.warmup_steps=2", f"train.feature_cache={str(cache).lower()}"]


class EpochClock:
    """Wall and CPU seconds of each epoch, read at the checkpoint that ends it. CPU time
    counts every thread of this process: on a machine shared with other jobs it is the
    steadier measure of the work done."""

    def __init__(self) -> None:
        self.marks = [(time.perf_counter(), time.process_time())]

    def __call__(self, step: int, model) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))

    def epochs(self) -> tuple[list[float], list[float]]:
        pairs = list(zip(self.marks, self.marks[1:]))
        return ([round(b[0] - a[0], 2) for a, b in pairs],
                [round(b[1] - a[1], 2) for a, b in pairs])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="training images")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--vit", choices=sorted(VITS), default="small")
    parser.add_argument("--out", default="runs/bench_feature_cache")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:  # on a shared machine one thread per process is the steadier measure
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    data = out / "data"
    if not (data / "manifest.json").is_file():
        generate_shapes(data, seed=0, image_size=224, n_train=args.images, n_val=16, n_test=16,
                        n_test_novel=8)
    wall, cpu = {}, {}
    for cache in (False, True):
        run = out / ("cached" if cache else "plain")
        shutil.rmtree(run, ignore_errors=True)
        config = load_config(None, overrides(data, args.images, args.batch, args.epochs, cache,
                                             args.vit))
        clock = EpochClock()
        train(config, run, on_checkpoint=clock)
        wall[cache], cpu[cache] = clock.epochs()
    result = {"vit": args.vit, "torch_threads": torch.get_num_threads(),
              "images": args.images, "batch": args.batch,
              "epoch_wall_s_plain": wall[False], "epoch_wall_s_cached": wall[True],
              "epoch_cpu_s_plain": cpu[False], "epoch_cpu_s_cached": cpu[True],
              "speedup_after_first_wall": round(sum(wall[False][1:]) / sum(wall[True][1:]), 2),
              "speedup_after_first_cpu": round(sum(cpu[False][1:]) / sum(cpu[True][1:]), 2)}
    print(json.dumps(result, indent=2))
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
