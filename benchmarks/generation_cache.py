"""Caption generation speed with and without the decoder's KV cache.

Loads a saved model and the images of one split of the shapes data (Karpathy
``captions.json``), generates a caption for each with every decoding, once re-running the
decoder over the whole prefix per step (``use_cache=False``) and once with the KV cache,
checks that both give the same tokens, and prints captions/s (the best of ``--repeats``
runs) and the speed-up. Run after ``make demo`` (or on any saved model):

  .venv/bin/python benchmarks/generation_cache.py --model runs/demo/model --data data/shapes

``--untrained`` times a freshly initialised model of the same architecture instead: it
rarely says EOS, so every caption runs to ``--max-new-tokens`` (the cache's best case).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tuwen.data.images import ImageTransform, load_image
from tuwen.data.readers import read_karpathy
from tuwen.models.generation import generate
from tuwen.models.image_text_model import ImageTextModel, build_model


def load_pixels(data: Path, split: str, n: int, model: ImageTextModel) -> torch.Tensor:
    records = read_karpathy(data / "captions.json", splits=[split]).records[:n]
    spec = model.spec
    transform = ImageTransform(spec.image_size, spec.image_mean, spec.image_std)
    return torch.stack([transform(load_image(r.image_path)) for r in records])


def timed(model: ImageTextModel, pixels: torch.Tensor, batch_size: int, decoding: str,
          use_cache: bool, max_new_tokens: int) -> tuple[float, list[list[int]], float]:
    """Seconds, generated ids, mean generated length (up to EOS)."""
    out: list[list[int]] = []
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(pixels), batch_size):
            tokens = model.encode_image(pixels[i: i + batch_size]).tokens
            ids = generate(model, tokens, decoding=decoding, max_new_tokens=max_new_tokens,
                           beam_size=3, use_cache=use_cache)
            out.extend(ids.tolist())
    seconds = time.perf_counter() - start
    eos = model.spec.eos_token_id
    lengths = [row.index(eos) + 1 if eos in row else len(row) for row in out]
    return seconds, out, sum(lengths) / len(lengths)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/demo/model")
    parser.add_argument("--data", default="data/shapes")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=30)
    parser.add_argument("--decodings", default="greedy,beam")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--untrained", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = ImageTextModel.from_pretrained(args.model)
    if args.untrained:
        torch.manual_seed(0)
        model = build_model(model.spec).eval()
    pixels = load_pixels(Path(args.data), args.split, args.images, model)
    rows = []
    for decoding in args.decodings.split(","):
        result = {}
        for use_cache in (False, True):
            runs = [timed(model, pixels, args.batch_size, decoding, use_cache,
                          args.max_new_tokens) for _ in range(args.repeats)]
            seconds = min(r[0] for r in runs)
            result[use_cache] = (len(pixels) / seconds, runs[0][1], runs[0][2])
        same = result[False][1] == result[True][1]
        rows.append({"decoding": decoding, "images": len(pixels),
                     "mean_tokens": round(result[True][2], 1),
                     "captions_per_s_no_cache": round(result[False][0], 1),
                     "captions_per_s_cache": round(result[True][0], 1),
                     "speedup": round(result[True][0] / result[False][0], 2),
                     "identical_tokens": same})
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
