"""Step time and peak memory of gradient accumulation with the whole batch's negatives.

Three ways to take one optimiser step over 64 images of the demo config
(configs/shapes.yaml: caption + ITC + ITM + VQA): one batch of 64; 4 micro-batches of 16
with ``train.whole_batch_negatives: true`` (ITC and ITM see all 64, the towers run twice);
4 x 16 with it off (each micro-batch its own 16). Each runs in a fresh Python process, so
its peak resident memory (``getrusage`` max RSS; tracemalloc does not see torch's tensors)
is its own; the step's share is the peak minus the resident memory before the first step.
On a GPU the peak of torch's CUDA allocator is reported too. A run's step time is the
median of its ``--steps`` timed steps after ``--warmup``, in wall-clock and in this process's
CPU seconds (the steadier measure on a machine shared with other jobs); the setups run in
turn for ``--rounds`` rounds and each reports its best round.

  .venv/bin/python benchmarks/accumulation.py --threads 1   # benchmarks/results/accumulation.json
  .venv/bin/python benchmarks/accumulation.py --quick       # seconds: a smoke run
  .venv/bin/python benchmarks/accumulation.py --set model.image_encoder.layers=6 ...
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "shapes.yaml"
# name -> (batch_size, grad_accumulation, whole_batch_negatives)
SETUPS = {"1x64": (64, 1, True), "4x16 whole-batch negatives": (16, 4, True),
          "4x16 per-micro-batch negatives": (16, 4, False)}


def overrides(data: Path, batch: int, accumulation: int, whole: bool, quick: bool) -> list[str]:
    sets = [f"data.root={data}", f"train.batch_size={batch}",
            f"train.grad_accumulation={accumulation}",
            f"train.whole_batch_negatives={str(whole).lower()}", "train.task_grad_norm_every=null"]
    if quick:  # the tiny test model: hidden 32, one layer per part, 32-px images
        sets += ["data.image_size=32", "data.tokenizer.vocab_size=200", "model.hidden_size=32",
                 "model.embed_dim=16", "model.image_encoder.patch_size=8",
                 "model.image_encoder.layers=1", "model.text_encoder.layers=1",
                 "model.fusion.window=null", "model.fusion.layers=1", "model.decoder.layers=1"]
    return sets


def rss_mb() -> float:
    """This process's resident memory now."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(sets: list[str], work: Path, warmup: int, steps: int, threads: int | None) -> dict:
    """One setup's step times and memory, in this process (run it in a fresh one)."""
    import torch

    from tuwen.tasks.table import load_run_config
    from tuwen.training.distributed import make_accelerator
    from tuwen.training.loaders import build_loader, micro_batch_groups
    from tuwen.training.parts import prepare, setup_run, train_mode
    from tuwen.training.state import TrainState
    from tuwen.training.step import optimisation_step

    if threads:
        torch.set_num_threads(threads)
    config = load_run_config(CONFIG, sets)
    accelerator = make_accelerator(config.train)
    config, assets = setup_run(config, work, accelerator, resume=False)
    parts = prepare(config, assets, accelerator, work)
    train_mode(parts)
    groups = micro_batch_groups(iter(build_loader(config, assets)), config.train.grad_accumulation)
    state, walls, cpus, before = TrainState(), [], [], rss_mb()
    cuda = accelerator.device.type == "cuda"
    for i in range(warmup + steps):
        group = next(groups)
        if cuda:
            torch.cuda.synchronize()
        start, cpu = time.perf_counter(), time.process_time()
        optimisation_step(parts, group, config.train, state, start)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    out = {"step_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "steps": steps,
           "rss_before_mb": before, "peak_rss_mb": peak, "step_rss_mb": peak - before,
           "device": str(accelerator.device), "load": os.getloadavg()[0]}
    if cuda:
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_setup(name: str, args: argparse.Namespace, data: Path) -> dict:
    batch, accumulation, whole = SETUPS[name]
    spec = {"sets": overrides(data, batch, accumulation, whole, args.quick) + args.set,
            "work": str(Path(args.work) / name.replace(" ", "_")), "warmup": args.warmup,
            "steps": args.steps, "threads": args.threads}
    code = ("import json, sys; from benchmarks.accumulation import measure; "
            "s = json.loads(sys.argv[1]); "
            "print(json.dumps(measure(s['sets'], __import__('pathlib').Path(s['work']), "
            "s['warmup'], s['steps'], s['threads'])))")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], cwd=root,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{name}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def shapes_data(work: Path, quick: bool) -> Path:
    from tuwen.data.shapes import generate_shapes

    data = work / ("shapes_quick" if quick else "shapes")
    if not (data / "manifest.json").exists():
        generate_shapes(data, seed=0, image_size=32 if quick else 48,
                        n_train=64 if quick else 512, n_val=8, n_test=8, n_test_novel=8,
                        progress=False)
    return data


def best(runs: list[dict]) -> dict:
    """A setup's best round (least CPU time per step), with every round's times."""
    out = dict(min(runs, key=lambda r: r["cpu_s"]))
    out["rounds"] = [{k: r[k] for k in ("step_s", "cpu_s", "peak_rss_mb", "load")} for r in runs]
    return out


def table(results: dict) -> str:
    lines = ["| setup | step, CPU (s) | step, wall (s) | peak RSS (MB) | "
             "step's RSS above the model (MB) | load (1 min) |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['cpu_s']:.3f} | {r['step_s']:.3f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['step_rss_mb']:.0f} | {r['load']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 steps: a smoke run")
    parser.add_argument("--steps", type=int, help="timed steps (default 10; quick 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 2; quick 1)")
    parser.add_argument("--rounds", type=int, default=3, help="the setups in turn, this often")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every setup (repeatable)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--work", default="runs/bench_accumulation")
    parser.add_argument("--results", default="benchmarks/results/accumulation.json")
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.quick else 10)
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    data = shapes_data(Path(args.work), args.quick)
    runs: dict[str, list] = {name: [] for name in SETUPS}
    for _ in range(1 if args.quick else args.rounds):
        for name in SETUPS:
            runs[name].append(run_setup(name, args, data))
    results = {name: best(r) for name, r in runs.items()}
    print(table(results))
    if not args.quick:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
