"""Training step time, tuwen against the peer, alternating, fp32 and bf16, both paths.

Per round and per (path, precision): the peer (benchmarks/peer.py, in-memory tensors) then
tuwen (``tuwen train`` with data loading, step time from metrics.jsonl), each in a fresh
process with the same thread count. Best of the rounds per side, and the spread. The ratio
is peer step time / tuwen step time (> 1: tuwen is faster). MFU: each side's step FLOPs over
its best step time, against the GEMM rate measured in this run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.hardware import gemm_rate, step_flops
from benchmarks.peer import Dims, build_peer, peer_batch
from benchmarks.tuwen_side import CONFIGS, overrides, run_cli, shapes_data, step_time, tuwen_step


@dataclass(frozen=True)
class Plan:
    steps: int        # steps per run
    first: int        # step time measured from this step's log line ...
    rounds: int       # alternating peer/tuwen rounds
    gemm_size: int
    threads: int

    @classmethod
    def make(cls, quick: bool, threads: int) -> Plan:
        if quick:
            return cls(steps=4, first=2, rounds=1, gemm_size=256, threads=threads)
        return cls(steps=40, first=10, rounds=3, gemm_size=1024, threads=threads)


def peer_run(plan: Plan, precision: str) -> float:
    cmd = [sys.executable, "-m", "benchmarks.peer", "--steps", str(plan.steps),
           "--warmup", str(plan.first), "--precision", precision]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env={**os.environ, **thread_env(plan.threads)}).stdout
    return json.loads(out.strip().splitlines()[-1])["step_s"]


def thread_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def tuwen_run(plan: Plan, path: str, precision: str, data: Path, out: Path) -> float:
    log_every = plan.first if plan.steps % plan.first == 0 else 1
    sets = overrides(data, precision, plan.steps, log_every, ["train.save_every=1000000"])
    records = run_cli(path, out / f"{path}_{precision}", sets, thread_env(plan.threads))
    return step_time(records, plan.first, plan.steps)


def flops(path: str, precision: str, data: Path, work: Path) -> dict:
    """FLOPs of one training step on each side (the peer at 24 tokens, tuwen at its batch's
    padded caption length)."""
    torch.manual_seed(0)
    peer = build_peer(Dims()).train()
    batch = peer_batch(Dims())
    run, tokens = tuwen_step(path, data, precision, work)
    return {"peer_flops": step_flops(lambda: peer(**batch).loss.backward()),
            "tuwen_flops": step_flops(run), "peer_tokens": Dims().text_length,
            "tuwen_tokens": tokens}


def summary(times: list[float]) -> dict:
    return {"best_s": min(times), "spread": max(times) / min(times) - 1, "runs": times}


def measure(plan: Plan, path: str, precision: str, data: Path, out: Path) -> dict:
    peer, tuwen = [], []
    for _ in range(plan.rounds):
        peer.append(peer_run(plan, precision))
        tuwen.append(tuwen_run(plan, path, precision, data, out))
    peer.append(peer_run(plan, precision))  # peer / tuwen / ... / peer, as in the issue
    return {"peer": summary(peer), "tuwen": summary(tuwen)}


def row(path: str, precision: str, times: dict, counted: dict, rate: float) -> dict:
    peer_s, tuwen_s = times["peer"]["best_s"], times["tuwen"]["best_s"]
    return {"name": f"train {path} {precision}", "peer": peer_s, "tuwen": tuwen_s,
            "ratio": peer_s / tuwen_s, "unit": "s/step",
            "peer_mfu": counted["peer_flops"] / peer_s / rate,
            "tuwen_mfu": counted["tuwen_flops"] / tuwen_s / rate,
            "detail": {**times, **counted, "gemm_flops_per_s": rate}}


def run(quick: bool, out: Path, threads: int, only_paths=tuple(CONFIGS)) -> dict:
    torch.set_num_threads(threads)
    plan = Plan.make(quick, threads)
    data = shapes_data(out / "shapes96", n_train=200 if quick else 1500)
    rows = []
    for precision in ("fp32", "bf16"):
        rate = gemm_rate(precision, plan.gemm_size)
        for path in only_paths:
            counted = flops(path, precision, data, out)
            times = measure(plan, path, precision, data, out / "runs")
            rows.append(row(path, precision, times, counted, rate))
    return {"plan": vars(plan), "rows": rows}
