"""AdamW's step on the benchmark model's parameters: PyTorch's per-parameter loop (its CPU
default) and ``foreach`` against the ``fused`` kernel that tuwen's build_optimizer picks.
Alternating, best of the repeats."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from benchmarks.peer import DIMS, build_peer

MODES = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def step_seconds(params: list[torch.Tensor], options: dict, steps: int) -> float:
    optimizer = torch.optim.AdamW(params, lr=1e-4, **options)
    optimizer.step()  # creates the state
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps


def run(quick: bool, out: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    params = [p for p in build_peer(DIMS["quick" if quick else "issue"]).parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    steps, repeats = (2, 1) if quick else (10, 5)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode, options in MODES.items():
            times[mode].append(step_seconds(params, options, steps))
    best = {mode: min(t) for mode, t in times.items()}
    rows = [{"name": f"AdamW step, {mode} vs fused", "peer": best[mode], "tuwen": best["fused"],
             "ratio": best[mode] / best["fused"], "unit": "s"} for mode in ("loop", "foreach")]
    return {"parameters": sum(p.numel() for p in params), "runs": times, "rows": rows}
