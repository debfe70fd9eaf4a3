"""Step time of joint training with train.deterministic on and off, alternating in one process.

    PYTHONPATH=src python benchmarks/determinism_cost.py --threads 2 --rounds 6 --steps 4

Prints, per mode, each round's mean step time (forward + backward + optimiser step on one
shapes batch) and whether two identical steps gave bitwise-equal gradients.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tuwen.config import load_config
from tuwen.data.shapes import generate_shapes
from tuwen.training.determinism import configure_determinism
from tuwen.training.distributed import make_accelerator
from tuwen.training.loaders import build_loader
from tuwen.training.optim import task_weights
from tuwen.training.parts import prepare, setup_run, train_mode


def setup(config_path: str, batch_size: int, work: Path):
    root = work / "shapes"
    generate_shapes(root, seed=0, image_size=48, n_train=4 * batch_size, n_val=8, n_test=8,
                    n_test_novel=8, progress=False)
    config = load_config(config_path, [f"data.root={root}", f"train.batch_size={batch_size}"])
    accelerator = make_accelerator(config.train)
    config, assets = setup_run(config, work / "run", accelerator, False)  # the config as it runs
    parts = prepare(config, assets, accelerator, work / "run")
    batch = next(iter(build_loader(config, assets)))
    train_mode(parts)
    return parts, batch, task_weights(0, config.train)


def gradients(parts, batch, weights) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # the same hard negatives each time
    parts.optimizer.zero_grad(set_to_none=True)
    total, _ = parts.objective(batch, weights)
    total.backward()
    return {n: p.grad.clone() for n, p in parts.objective.named_parameters()
            if p.grad is not None}


def step_time(parts, batch, weights, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        gradients(parts, batch, weights)
        parts.optimizer.step()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/shapes.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        parts, batch, weights = setup(args.config, args.batch_size, Path(tmp))
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.rounds):
            for mode in (True, False):
                configure_determinism(mode)
                times[mode].append(step_time(parts, batch, weights, args.steps))
        for mode in (True, False):
            configure_determinism(mode)
            runs = [gradients(parts, batch, weights) for _ in range(4)]
            differ = max(sum(not torch.equal(runs[0][k], r[k]) for k in r) for r in runs[1:])
            ms = [1000 * t for t in times[mode]]
            print(f"deterministic={mode}: step ms median {statistics.median(ms):.0f} "
                  f"(min {min(ms):.0f}, max {max(ms):.0f}; rounds {[round(m) for m in ms]}); "
                  f"repeated steps: {differ} of {len(runs[0])} gradients differ at most")


if __name__ == "__main__":
    main()
