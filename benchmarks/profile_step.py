"""Where a training step's time goes: ``torch.profiler`` over tuwen's step (loader, forward,
backward, clipping, optimiser, as the trainer runs them) and over the peer's.

  python -m benchmarks.profile_step --path vit_gpt2 --precision bf16 --threads 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.peer import DIMS, Dims, build_peer, peer_batch, peer_step
from benchmarks.tuwen_side import CONFIGS, overrides, shapes_data
from tuwen.config import load_config
from tuwen.models.image_text_model import build_model
from tuwen.tasks.table import with_train_tasks
from tuwen.training.assets import prepare_assets
from tuwen.training.loop import build_loader
from tuwen.training.objective import JointObjective
from tuwen.training.optim import build_optimizer, task_weights
from tuwen.training.precision import autocast


def tuwen_parts(path: str, dims: Dims, precision: str, data: Path, work: Path):
    config = load_config(CONFIGS[path], overrides(path, dims, data, precision, 100, 10))
    assets = prepare_assets(config, work / f"assets_{path}")
    config = with_train_tasks(config, assets.train, lambda _: None)
    model = build_model(assets.spec).train()
    objective = JointObjective(model)
    optimizer = build_optimizer(model, config.train)
    return objective, optimizer, iter(build_loader(config, assets)), config


def tuwen_step(objective, optimizer, loader, config) -> None:
    with record_function("loader"):
        batch = next(loader)
    with record_function("forward"), autocast(config.train.precision, torch.device("cpu")):
        total, _ = objective(batch, task_weights(0, config.train))
    with record_function("backward"):
        total.backward()
    with record_function("clip"):
        torch.nn.utils.clip_grad_norm_(objective.parameters(), config.train.grad_clip)
    with record_function("optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    total.item()


def profiled(step, steps: int, rows: int) -> None:
    for _ in range(2):
        step()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    print(f"wall per step under the profiler: {(time.perf_counter() - start) / steps:.3f} s")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", choices=sorted(CONFIGS), default="vit_gpt2")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--work", default="runs/benchmarks/profile")
    parser.add_argument("--dims", choices=sorted(DIMS), default="issue")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    dims = DIMS[args.dims]
    data = shapes_data(work / f"shapes{dims.image_size}", dims.image_size, n_train=400)
    parts = tuwen_parts(args.path, dims, args.precision, data, work)
    print(f"== tuwen {args.path} {args.precision}")
    profiled(lambda: tuwen_step(*parts), args.steps, args.rows)
    torch.manual_seed(0)
    peer = build_peer(dims).train()
    optimizer = torch.optim.AdamW(peer.parameters(), lr=5e-4)
    batch = peer_batch(dims)
    print(f"== peer {args.precision}")
    profiled(lambda: peer_step(peer, optimizer, batch, args.precision, "cpu"), args.steps,
             args.rows)


if __name__ == "__main__":
    main()
