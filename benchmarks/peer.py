"""The peer: Hugging Face ``VisionEncoderDecoderModel`` (ViT encoder + GPT-2 decoder with
cross-attention) trained by a plain AdamW loop on in-memory tensors, as a user would write it.

  python -m benchmarks.peer --steps 40 --precision bf16     # prints one JSON line

Step time is the wall clock of steps ``warmup..steps`` divided by their number.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import dataclass

import torch
from transformers import (
    GPT2Config,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
)


@dataclass(frozen=True)
class Dims:
    """The architecture both sides share (issue #20's dimensions by default)."""

    image_size: int = 96
    patch_size: int = 16
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    mlp: int = 1024
    vocab: int = 1000
    text_length: int = 24
    batch: int = 32


# ViT-B/16 at 224 px and GPT-2 124M (benchmarks/gpu.sh); GPT-2's vocabulary kept at 1000 to
# match tuwen's WordPiece tokenizer on the shapes captions.
GPU_DIMS = Dims(image_size=224, hidden=768, layers=12, heads=12, mlp=3072, batch=64)
# --quick: a smoke run of the benchmark code, not a measurement
QUICK_DIMS = Dims(image_size=32, hidden=64, layers=1, heads=2, mlp=128, batch=8)
DIMS = {"issue": Dims(), "gpu": GPU_DIMS, "quick": QUICK_DIMS}


def build_peer(dims: Dims) -> VisionEncoderDecoderModel:
    vit = ViTConfig(hidden_size=dims.hidden, num_hidden_layers=dims.layers,
                    num_attention_heads=dims.heads, intermediate_size=dims.mlp,
                    image_size=dims.image_size, patch_size=dims.patch_size,
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    gpt2 = GPT2Config(n_embd=dims.hidden, n_layer=dims.layers, n_head=dims.heads,
                      n_inner=dims.mlp, vocab_size=dims.vocab, n_positions=64,
                      add_cross_attention=True, is_decoder=True, resid_pdrop=0.0,
                      embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2,
                      pad_token_id=0)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit, gpt2)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 1, 0, 2
    return VisionEncoderDecoderModel(config=config)


def peer_batch(dims: Dims, device: str = "cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(dims.batch, 3, dims.image_size, dims.image_size, generator=g)
    labels = torch.randint(3, dims.vocab, (dims.batch, dims.text_length), generator=g)
    return {"pixel_values": pixels.to(device), "labels": labels.to(device)}


def autocast(precision: str, device: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=torch.bfloat16)


def peer_step(model, optimizer, batch: dict, precision: str, device: str) -> torch.Tensor:
    with autocast(precision, device):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_peer(dims: Dims, steps: int, warmup: int, precision: str,
              device: str = "cpu") -> dict:
    torch.manual_seed(0)
    model = build_peer(dims).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    batch = peer_batch(dims, device)
    for _ in range(warmup):
        peer_step(model, optimizer, batch, precision, device)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps - warmup):
        loss = peer_step(model, optimizer, batch, precision, device)
    sync(device)
    step_s = (time.perf_counter() - start) / (steps - warmup)
    return {"step_s": step_s, "loss": loss.item(), "tokens": dims.text_length}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dims", choices=sorted(DIMS), default="issue")
    args = parser.parse_args(argv)
    dims = DIMS[args.dims]
    result = time_peer(dims, args.steps, args.warmup, args.precision, args.device)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
