"""Deterministic training: a seed and a thread count fix the result.

On CPUs with more than one thread, the backward of tensor indexing (``x[idx]``, an
``index_put_`` with ``accumulate=True``) adds the rows of repeated indexes from several
threads in whatever order they run, so two runs with the same seed drift apart after the
first step. ``torch.use_deterministic_algorithms(True)`` makes PyTorch take its sorted,
ordered path for it (and for the CUDA ops its documentation lists); cuDNN autotuning, which
may choose a different convolution algorithm per run, is turned off, and cuBLAS gets the
fixed workspace its reproducibility notes ask for. What it costs is measured in
docs/experiments/2026-12-02-determinism.md.

What is guaranteed: same seed, same thread count, same hardware and library versions ->
bitwise-same weights. Different thread counts may differ (reductions split differently).
"""

from __future__ import annotations

import os
import warnings

import torch

# cuBLAS reproducibility: https://docs.nvidia.com/cuda/cublas/#results-reproducibility
CUBLAS_WORKSPACE = ":4096:8"


def configure_determinism(enabled: bool) -> None:
    """Turn PyTorch's deterministic algorithms on or off for this process.

    With ``enabled`` an operation that has no deterministic implementation raises (on the
    devices tuwen trains on, none of the ones it uses); without it, PyTorch's defaults.
    """
    if enabled and torch.cuda.is_available():
        workspace = os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        if workspace not in (":4096:8", ":16:8"):
            warnings.warn(f"CUBLAS_WORKSPACE_CONFIG={workspace} is not one of cuBLAS's "
                          "deterministic settings (:4096:8 or :16:8)", stacklevel=2)
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    if enabled:
        torch.backends.cudnn.benchmark = False


def describe() -> str:
    """One line for logs: whether the result is reproducible and at how many threads."""
    state = "on" if torch.are_deterministic_algorithms_enabled() else "off"
    return f"deterministic algorithms {state}, {torch.get_num_threads()} CPU threads"
