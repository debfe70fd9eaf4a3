"""The training comparison on CUDA in bf16 at realistic sizes: ViT-B/16 at 224 px + GPT-2
124M (12 layers, 768 wide), batch 64, both paths; samples/s, MFU against the measured bf16
GEMM rate, and the ratio to the peer. Run by benchmarks/gpu.sh; ``--device cpu --quick``
runs the same code at tiny sizes on a CPU (a smoke test, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from benchmarks.__main__ import table
from benchmarks.training import Plan, run_plan


def plan(device: str, quick: bool, threads: int) -> Plan:
    if quick:
        return Plan("quick", steps=4, first=2, rounds=1, gemm_size=256, threads=threads,
                    device=device, precisions=("bf16",))
    return Plan("gpu", steps=40, first=10, rounds=2, gemm_size=8192, threads=threads,
                device=device, precisions=("bf16",))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--results", default="benchmarks/results")
    parser.add_argument("--work", default="runs/benchmarks/gpu")
    args = parser.parse_args(argv)
    result = {"name": "gpu", "quick": args.quick,
              **run_plan(plan(args.device, args.quick, args.threads), Path(args.work))}
    Path(args.results).mkdir(parents=True, exist_ok=True)
    (Path(args.results) / "gpu.json").write_text(json.dumps(result, indent=2))
    print(table({"gpu": result}))
    return result


if __name__ == "__main__":
    main()
