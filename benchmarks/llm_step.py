"""Step time of ``configs/shapes_llm.yaml`` on two source trees, alternating runs.

Each run is ``tuwen train`` with ``PYTHONPATH=TREE/src`` for ``--steps`` steps, logging every
step; a step's time is the difference of consecutive ``elapsed_s`` in ``metrics.jsonl``, and a
run's time is the median over its steps after the first two (start-up and the feature cache's
first reads excluded); the fastest single step is reported beside it, as the least
disturbed by other work on a shared machine. Variants (``--variant NAME=TREE:'--set a=b'``)
run in turn, each round in the same order, so a slow minute on a shared machine hits every
variant alike; the best run of each variant is reported.

  python benchmarks/llm_step.py --data /tmp/shapes64 --pretrained ~/.cache/tuwen-pretrained \\
      --variant base=/work/base: --variant new=.:'--set train.precision=bf16' --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG = "configs/shapes_llm.yaml"


def run_once(tree: Path, extra: list[str], data: Path, pretrained: Path | None, steps: int,
             threads: int, out: Path, config: str = CONFIG) -> list[float]:
    """Seconds per step of one short run of ``tree``'s code on its ``config``."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    towers = [] if pretrained is None else [
        "--set", f"model.image_encoder.name_or_path={pretrained}/dinov2-small",
        "--set", f"model.text_encoder.name_or_path={pretrained}/minilm",
        "--set", f"model.decoder.name_or_path={pretrained}/smollm2-135m"]
    cmd = [sys.executable, "-m", "tuwen", "train", str(tree / config), "--out", str(out),
           "--set", f"data.root={data}", *towers,
           "--set", f"train.max_steps={steps}", "--set", "train.log_every=1",
           "--set", "train.warmup_steps=2", "--set", "eval.splits=[]", *extra]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    elapsed = [json.loads(line)["elapsed_s"]
               for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [b - a for a, b in zip(elapsed, elapsed[1:])][1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True,
                        help="NAME=TREE:'--set k=v ...' (TREE: a checkout with src/ and configs/)")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--pretrained", type=Path, default=None,
                        help="folder of dinov2-small, minilm, smollm2-135m (the LLM config)")
    parser.add_argument("--config", default=CONFIG, help="relative to each tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    variants = {}
    for spec in args.variant:
        name, rest = spec.split("=", 1)
        tree, _, extra = rest.partition(":")
        variants[name] = (Path(tree).resolve(), shlex.split(extra))
    times: dict[str, list[float]] = {name: [] for name in variants}
    fastest: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as work:
        for r in range(args.rounds):
            for name, (tree, extra) in variants.items():
                steps = run_once(tree, extra, args.data, args.pretrained, args.steps,
                                 args.threads, Path(work) / f"{name}-{r}", args.config)
                times[name].append(statistics.median(steps))
                fastest[name].append(min(steps))
                load = os.getloadavg()[0]
                print(json.dumps({"round": r, "variant": name,
                                  "s_per_step": round(times[name][-1], 3),
                                  "steps": [round(s, 2) for s in steps], "load1": load}),
                      flush=True)
    best = {name: min(ts) for name, ts in times.items()}
    quickest = {name: min(ts) for name, ts in fastest.items()}
    first, first_quick = next(iter(best.values())), next(iter(quickest.values()))
    for name, value in best.items():
        print(f"{name}: best median {value:.3f} s/step ({value / first:.0%} of the first); "
              f"fastest step {quickest[name]:.3f} s ({quickest[name] / first_quick:.0%})")


if __name__ == "__main__":
    main()
