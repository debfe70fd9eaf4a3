"""What the hardware can do: the dense GEMM rate, and the FLOPs of a training step.

Model FLOP utilisation (MFU) is a step's FLOPs (``torch.utils.flop_counter``, forward and
backward) over its time, against the GEMM rate measured in the same run, dtype and threads.
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gemm_rate(precision: str, size: int = 1024, repeats: int = 5, device: str = "cpu") -> float:
    """FLOP/s of a square matmul (best of ``repeats``) in ``precision``."""
    a = torch.randn(size, size, device=device, dtype=DTYPES[precision])
    b = torch.randn(size, size, device=device, dtype=DTYPES[precision])
    a @ b  # warm-up: first call pays for kernel selection
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def step_flops(run_step) -> int:
    """FLOPs of ``run_step()`` (a forward and backward), counted by PyTorch's flop counter."""
    with FlopCounterMode(display=False) as counter:
        run_step()
    return counter.get_total_flops()
