"""bf16 autocast against fp32 on this machine: training speed and validation loss.

Trains the shapes model (configs/shapes.yaml as it stands; 64-px data resized to 48) for the same
steps from the same seed twice, ``train.precision: fp32`` and ``bf16``, then scores both
trained models on the same validation subset in fp32. Speed is the training samples/s
after the first log window (warm-up excluded), from each run's metrics.jsonl. Whether bf16
is faster depends on the CPU: with AMX/AVX512-BF16 matrix units it is, without them
PyTorch emulates bf16 matmuls and it is slower.

  .venv/bin/python benchmarks/precision.py                    # 60 steps of 32 images
  .venv/bin/python benchmarks/precision.py --steps 200 --batch 64
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from tuwen.config import load_config
from tuwen.data.shapes import generate_shapes
from tuwen.models.image_text_model import ImageTextModel
from tuwen.training.assets import prepare_assets
from tuwen.training.loop import train
from tuwen.training.optim import task_weights
from tuwen.training.validation import Validation, validation_batches


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx512_bf16", "amx_bf16", "avx512f", "avx2")
    return " ".join(f for f in wanted if f in flags) or "none of " + ", ".join(wanted)


def val_loss(config, run: Path) -> float:
    """Joint validation loss of RUN/model, in fp32, on the validation subset."""
    fp32 = config.model_copy(update={"train": config.train.model_copy(
        update={"precision": "fp32"})})
    assets = prepare_assets(fp32, run / "model", reuse=True)
    model = ImageTextModel.from_pretrained(run / "model")
    validation = Validation(validation_batches(fp32, assets), assets.tokenizer, fp32)
    with torch.no_grad():
        return validation.losses(model.eval(), task_weights(0, fp32.train),
                                 torch.device("cpu"))["val_loss"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default="runs/bench_precision")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:  # on a shared machine one thread per process is the steadier measure
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    data = out / "data"
    if not (data / "manifest.json").is_file():
        generate_shapes(data, seed=0, n_train=2000, n_val=128, n_test=16, n_test_novel=8)
    result: dict = {"cpu_flags": cpu_flags(), "torch_threads": torch.get_num_threads(),
                    "steps": args.steps, "batch": args.batch}
    log_every = max(args.steps // 6, 1)
    for precision in ("fp32", "bf16"):
        run = out / precision
        shutil.rmtree(run, ignore_errors=True)
        config = load_config("configs/shapes.yaml", [
            f"data.root={data}", f"train.precision={precision}", f"train.max_steps={args.steps}",
            f"train.batch_size={args.batch}", f"train.log_every={log_every}",
            f"train.save_every={args.steps}", "train.warmup_steps=10", "train.val_max_images=128"])
        train(config, run)
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        steady = lines[1:] or lines
        result[precision] = {
            "samples_per_sec": round(sum(x["samples_per_sec"] for x in steady) / len(steady), 1),
            "train_loss_last": round(lines[-1]["loss"], 4),
            "val_loss_fp32_eval": round(val_loss(config, run), 4)}
    result["bf16_speed_ratio"] = round(result["bf16"]["samples_per_sec"] /
                                       result["fp32"]["samples_per_sec"], 2)
    print(json.dumps(result, indent=2))
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
