"""Batched greedy captioning: tuwen's KV-cache decoder against the peer's ``generate``.

64 images x 20 new tokens (``--quick``: 8 x 5), untrained models of the same dimensions on
both sides, image encoding included; best of the repeats, alternating peer / tuwen. An
untrained model rarely writes EOS, so both sides run to the token limit (the result records
the mean generated length of each to show it).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from benchmarks.peer import DIMS, build_peer
from benchmarks.tuwen_side import CONFIGS, dims_overrides, shapes_data
from tuwen.config import load_config
from tuwen.models.generation import generate
from tuwen.models.image_text_model import build_model
from tuwen.training.assets import prepare_assets


def timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.inference_mode():
        out = fn()
    return time.perf_counter() - start, out


def peer_captions(model, pixels: torch.Tensor, tokens: int):
    return lambda: model.generate(pixels, max_new_tokens=tokens, min_new_tokens=tokens,
                                  do_sample=False, num_beams=1)


def tuwen_captions(model, pixels: torch.Tensor, tokens: int):
    return lambda: generate(model, model.encode_image(pixels).tokens, decoding="greedy",
                            max_new_tokens=tokens)


def tuwen_model(path: str, dims, data: Path, work: Path):
    config = load_config(CONFIGS[path], [f"data.root={data}", *dims_overrides(path, dims)])
    assets = prepare_assets(config, work / f"assets_{path}")
    torch.manual_seed(0)
    return build_model(assets.spec).eval()


def generated_length(ids: torch.Tensor, eos: int) -> float:
    """Mean tokens per row up to and including the first EOS."""
    hit = (ids == eos).int()
    first = torch.where(hit.any(1), hit.argmax(1) + 1, torch.full_like(hit[:, 0], ids.shape[1]))
    return float(first.float().mean())


def compare(path: str, dims, images: int, tokens: int, repeats: int, data: Path,
            work: Path) -> dict:
    torch.manual_seed(0)
    peer = build_peer(dims).eval()
    ours = tuwen_model(path, dims, data, work)
    pixels = torch.randn(images, 3, dims.image_size, dims.image_size)
    peer_s, tuwen_s = [], []
    for _ in range(repeats):
        seconds, peer_ids = timed(peer_captions(peer, pixels, tokens))
        peer_s.append(seconds)
        seconds, tuwen_ids = timed(tuwen_captions(ours, pixels, tokens))
        tuwen_s.append(seconds)
    return {"name": f"generate {path} greedy {images}x{tokens}", "peer": min(peer_s),
            "tuwen": min(tuwen_s), "ratio": min(peer_s) / min(tuwen_s), "unit": "s/batch",
            "detail": {"peer_runs": peer_s, "tuwen_runs": tuwen_s,
                       "peer_tokens": peer_ids.shape[1] - 1,
                       "tuwen_tokens": generated_length(tuwen_ids, ours.spec.eos_token_id)}}


def run(quick: bool, out: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    images, tokens, repeats = (8, 5, 1) if quick else (64, 20, 3)
    dims = DIMS["quick" if quick else "issue"]
    data = shapes_data(out / f"shapes{dims.image_size}", dims.image_size, n_train=200)
    return {"rows": [compare(path, dims, images, tokens, repeats, data, out)
                     for path in CONFIGS]}
