"""Precision and memory: autocast, gradient checkpointing, torch.compile.

Accelerate autocasts only on accelerators, so the loop opens ``torch.autocast`` itself:
``train.precision: bf16`` then also runs in bfloat16 on a CPU. Losses are computed in
float32 (models/losses.py casts the logits).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
import torch.utils.checkpoint
from torch import nn

from tuwen.models.layers import Block

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines()
                 if line.startswith("flags")), set())


def precision_warning(precision: str, device: torch.device, flags: set[str] | None = None,
                      ) -> str | None:
    """A warning when bf16 autocast is bound to be slower than fp32: on a CPU without bf16
    matrix instructions PyTorch emulates bf16 matmuls (benchmarks/NOTES.md)."""
    if precision != "bf16" or device.type != "cpu":
        return None
    flags = cpu_flags() if flags is None else flags
    if not flags or flags & {"avx512_bf16", "amx_bf16"}:
        return None
    return ("train.precision: bf16 on a CPU without bf16 matrix instructions (AVX512-BF16 or "
            "AMX): matmuls are emulated and usually slower than fp32")


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute every Transformer ``Block`` of the small towers in the backward pass instead
    of keeping its activations; Hugging Face towers use their own switch. Returns how many
    modules were switched (parameter names are unchanged, so checkpoints stay compatible)."""
    count = 0
    for module in model.modules():
        if isinstance(module, Block):
            module.forward = functools.partial(_checkpointed, module.forward)
            count += 1
        elif hasattr(module, "gradient_checkpointing_enable") and \
                getattr(module, "supports_gradient_checkpointing", False):
            module.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
            count += 1
    return count


def compile_towers(model: nn.Module) -> None:
    """``torch.compile`` each tower in place (``Module.compile`` keeps parameter names);
    the task code around them has data-dependent shapes that would only cause recompiles."""
    for name in ("image_encoder", "text_encoder", "fusion", "decoder"):
        getattr(model, name).compile(dynamic=None)
