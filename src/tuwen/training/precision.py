"""Precision and memory: autocast, gradient checkpointing, torch.compile.

Accelerate autocasts only on accelerators, so the loop opens ``torch.autocast`` itself:
``train.precision: bf16`` then also runs in bfloat16 on a CPU. Losses are computed in
float32 (models/losses.py casts the logits).

``train.precision: auto`` is resolved once, before the run starts (``with_precision``):
bf16 where the hardware computes it natively (a GPU that supports it; a CPU with
AVX512-BF16 or AMX, read from /proc/cpuinfo), fp32 elsewhere, where bf16 matmuls are
emulated. The run prints the choice and its reason, and its config.yaml records the choice.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
import torch.utils.checkpoint
from torch import nn

from tuwen.config import Config
from tuwen.models.layers import Block

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NATIVE_BF16 = {"avx512_bf16", "amx_bf16"}  # /proc/cpuinfo flags of CPUs that compute bf16


def autocast(precision: str, device: torch.device):
    if precision == "auto":
        precision, _ = auto_precision(device.type)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def auto_precision(device_type: str, flags: set[str] | None = None,
                   cuda_bf16: bool | None = None) -> tuple[str, str]:
    """``bf16`` or ``fp32`` for ``train.precision: auto`` on this kind of device, and why."""
    if device_type == "cuda":
        native = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        return ("bf16", "the GPU supports bf16") if native else \
            ("fp32", "the GPU does not support bf16")
    if device_type != "cpu":
        return "fp32", f"bf16 is not known to be native on {device_type}"
    found = sorted((cpu_flags() if flags is None else flags) & NATIVE_BF16)
    if found:
        return "bf16", f"the CPU computes bf16 natively ({', '.join(found)})"
    return "fp32", "the CPU has no bf16 matrix instructions (AVX512-BF16 or AMX)"


def with_precision(config: Config) -> tuple[Config, str | None]:
    """``config`` with ``train.precision: auto`` resolved for the device training will use
    (a GPU when there is one), and the line that reports it (None when not ``auto``)."""
    if config.train.precision != "auto":
        return config, None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    choice, reason = auto_precision(device)
    train = config.train.model_copy(update={"precision": choice})
    return (config.model_copy(update={"train": train}),
            f"train.precision: auto -> {choice} on {device} ({reason})")


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
    if not flags or flags & NATIVE_BF16:
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
