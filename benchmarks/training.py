"""Training step time, tuwen against the peer, alternating, fp32 and bf16, both paths.

Per round and per (path, precision): the peer (benchmarks/peer.py, in-memory tensors) then
tuwen (``tuwen train`` with data loading, step time from metrics.jsonl), each in a fresh
process with the same thread count; the peer runs once more at the end (peer / tuwen / ...
/ peer). Best of the runs per side, and the spread. The ratio is peer step time / tuwen
step time (> 1: tuwen is faster). MFU: each side's step FLOPs over its best step time,
against the GEMM rate measured in this run (same dtype and threads).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from benchmarks.hardware import gemm_rate, step_flops
from benchmarks.peer import DIMS, Dims, build_peer, peer_batch
from benchmarks.tuwen_side import CONFIGS, overrides, run_cli, shapes_data, step_time, tuwen_step


@dataclass(frozen=True)
class Plan:
    dims: str         # a key of benchmarks.peer.DIMS
    steps: int        # steps per run
    first: int        # step time measured from this step's log line to the last one
    rounds: int       # alternating peer/tuwen rounds
    gemm_size: int
    threads: int
    device: str = "cpu"
    precisions: tuple[str, ...] = ("fp32", "bf16")

    @classmethod
    def make(cls, quick: bool, threads: int) -> Plan:
        if quick:
            return cls("quick", steps=4, first=2, rounds=1, gemm_size=256, threads=threads)
        return cls("issue", steps=40, first=10, rounds=3, gemm_size=1024, threads=threads)


def thread_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def peer_run(plan: Plan, precision: str) -> float:
    cmd = [sys.executable, "-m", "benchmarks.peer", "--steps", str(plan.steps), "--warmup",
           str(plan.first), "--precision", precision, "--dims", plan.dims,
           "--device", plan.device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env={**os.environ, **thread_env(plan.threads)}).stdout
    return json.loads(out.strip().splitlines()[-1])["step_s"]


def tuwen_run(plan: Plan, path: str, precision: str, data: Path, out: Path) -> float:
    sets = overrides(path, DIMS[plan.dims], data, precision, plan.steps, plan.first,
                     ["train.save_every=1000000"])
    run_dir = out / f"{path}_{precision}"
    shutil.rmtree(run_dir, ignore_errors=True)
    records = run_cli(path, run_dir, sets, thread_env(plan.threads), plan.device)
    return step_time(records, plan.first, plan.steps)


def flops(plan: Plan, path: str, precision: str, data: Path, work: Path) -> dict:
    """FLOPs of one training step on each side (the peer at its full caption length,
    tuwen at its batch's padded caption length)."""
    dims: Dims = DIMS[plan.dims]
    torch.manual_seed(0)
    peer = build_peer(dims).to(plan.device).train()
    batch = peer_batch(dims, plan.device)
    run, tokens = tuwen_step(path, dims, data, precision, work, plan.device)
    return {"peer_flops": step_flops(lambda: peer(**batch).loss.backward()),
            "tuwen_flops": step_flops(run), "peer_tokens": dims.text_length,
            "tuwen_tokens": tokens}


def summary(times: list[float]) -> dict:
    return {"best_s": min(times), "spread": max(times) / min(times) - 1, "runs": times}


def measure(plan: Plan, path: str, precision: str, data: Path, out: Path) -> dict:
    """Alternating runs; the GEMM rate is measured before each, and its best is kept (on a
    shared machine a single measurement may fall in a busy moment)."""
    peer, tuwen, rates = [], [], []
    for _ in range(plan.rounds):
        rates.append(gemm_rate(precision, plan.gemm_size, device=plan.device))
        peer.append(peer_run(plan, precision))
        rates.append(gemm_rate(precision, plan.gemm_size, device=plan.device))
        tuwen.append(tuwen_run(plan, path, precision, data, out))
    peer.append(peer_run(plan, precision))
    return {"peer": summary(peer), "tuwen": summary(tuwen), "gemm_rates": rates}


def row(path: str, precision: str, times: dict, counted: dict, batch: int) -> dict:
    peer_s, tuwen_s = times["peer"]["best_s"], times["tuwen"]["best_s"]
    rate = max(times["gemm_rates"])
    return {"name": f"train {path} {precision}", "peer": peer_s, "tuwen": tuwen_s,
            "ratio": peer_s / tuwen_s, "unit": "s/step",
            "peer_mfu": counted["peer_flops"] / peer_s / rate,
            "tuwen_mfu": counted["tuwen_flops"] / tuwen_s / rate,
            "detail": {**times, **counted, "gemm_flops_per_s": rate,
                       "peer_samples_per_s": batch / peer_s,
                       "tuwen_samples_per_s": batch / tuwen_s}}


def run_plan(plan: Plan, out: Path, paths=tuple(CONFIGS)) -> dict:
    torch.set_num_threads(plan.threads)
    dims = DIMS[plan.dims]
    data = shapes_data(out / f"shapes{dims.image_size}", dims.image_size,
                       n_train=max(200, dims.batch * plan.steps))
    rows = []
    for precision in plan.precisions:
        for path in paths:
            counted = flops(plan, path, precision, data, out)
            times = measure(plan, path, precision, data, out / "runs")
            rows.append(row(path, precision, times, counted, dims.batch))
    return {"plan": vars(plan), "dims": vars(dims), "rows": rows}


def run(quick: bool, out: Path, threads: int, **changes) -> dict:
    """``changes``: Plan fields to override (None: keep)."""
    plan = Plan.make(quick, threads)
    return run_plan(replace(plan, **{k: v for k, v in changes.items() if v is not None}), out)
