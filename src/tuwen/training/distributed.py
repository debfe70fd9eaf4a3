"""Running one training on several processes (``accelerate launch`` or ``torchrun``).

The Accelerator reads the launcher's environment (RANK, WORLD_SIZE, MASTER_ADDR ...);
``train.distributed`` picks DDP or FSDP. Each rank reads its own share of every global
batch; the main process alone writes logs, checkpoints and progress bars.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import (
    DistributedDataParallelKwargs,
    DistributedType,
    FullyShardedDataParallelPlugin,
)
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.utils.data import Sampler

from tuwen.config import TrainConfig
from tuwen.errors import ConfigError
from tuwen.models.image_text_model import build_model
from tuwen.training.checkpoint import rng_state

PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def make_accelerator(tcfg: TrainConfig, cpu: bool = False) -> Accelerator:
    # A step may leave a head unused (a batch without questions, ITM with one image):
    # DDP must not wait for gradients that will never come.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    # FSDP2 (per-parameter sharding): the version whose state-dict handling the tests run
    fsdp = FullyShardedDataParallelPlugin(fsdp_version=2) if tcfg.distributed == "fsdp" else None
    # On GPUs Accelerate adds the fp16 grad scaler and FSDP's precision policy; the autocast
    # itself is the loop's (precision.autocast), which also works on CPUs.
    mixed = PRECISION[tcfg.precision] if torch.cuda.is_available() and not cpu else "no"
    # Accelerate runs several CPU processes (gloo) only when told it is on CPUs.
    cpu = cpu or (not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", 1)) > 1)
    accelerator = Accelerator(mixed_precision=mixed, cpu=cpu, kwargs_handlers=handlers,
                              fsdp_plugin=fsdp)
    if tcfg.distributed == "fsdp" and accelerator.num_processes > 1 and \
            accelerator.distributed_type != DistributedType.FSDP:
        warnings.warn("train.distributed=fsdp: Accelerate shards models on GPUs only; these "
                      "CPU processes run DDP", stacklevel=2)
    if tcfg.precision == "fp16" and accelerator.device.type == "cpu":
        raise ConfigError("train.precision=fp16 needs a GPU (its loss scaling is CUDA's); "
                          "use bf16 on a CPU")
    return accelerator


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_rng_states() -> list[tuple[dict, dict]]:
    """Every rank's RNG states, in rank order (a collective: call it on every rank)."""
    mine = rng_state()
    if not is_distributed():
        return [mine]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any (e.g. one rank got SIGTERM)."""
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(values: dict[str, float], keys: tuple[str, ...]) -> dict[str, float]:
    """Per-key mean over the ranks that have the key (for logging; a collective)."""
    if not is_distributed():
        return values
    sums = torch.tensor([[values.get(k, 0.0), float(k in values)] for k in keys],
                        dtype=torch.float64)
    dist.all_reduce(sums)
    return {k: s / n for k, (s, n) in zip(keys, sums.tolist()) if n > 0}


class ShardedBatchSampler(Sampler[list[int]]):
    """Rank r of W takes batches r, r+W, r+2W ... of ``inner``: the W consecutive batches
    of one round together form one global step, the same ones a single process with
    ``grad_accumulation=W`` would take. Positions count this rank's batches."""

    def __init__(self, inner, rank: int, world_size: int) -> None:
        self.inner, self.rank, self.world_size = inner, rank, world_size

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.inner.set_position(epoch, start_batch * self.world_size)

    def __len__(self) -> int:
        return len(self.inner) // self.world_size

    def __iter__(self):
        start = self.inner.start_batch
        full_rounds_end = len(self) * self.world_size
        for i, batch in enumerate(self.inner, start=start):
            if i >= full_rounds_end:
                return
            if i % self.world_size == self.rank:
                yield batch


# ---------------------------------------------------------------- FSDP: whole states on rank 0
# With FSDP every rank holds a shard of each weight and of the optimiser state; checkpoints
# and the final model need the whole of them. These gather (collectives: call on every rank)
# and scatter them back with torch.distributed.checkpoint's state-dict API. DDP and single
# processes never come here. tests/training/test_fsdp_cpu.py runs these helpers on a model
# sharded by FSDP2 over two CPU processes (gloo), against one unsharded process; Accelerate's
# FSDP plugin path (make_accelerator, prepare) shards on GPUs only and is not tested.

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def is_fsdp(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def full_states(objective: torch.nn.Module, optimizer) -> tuple[dict, dict]:
    """(model weights without the objective's ``model.`` prefix, optimiser state)."""
    weights = get_model_state_dict(objective, options=FULL)
    return ({k.removeprefix("model."): v for k, v in weights.items()},
            get_optimizer_state_dict(objective, _inner(optimizer), options=FULL))


def load_full_states(objective: torch.nn.Module, optimizer, weights: dict,
                     optimizer_state: dict) -> None:
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(objective, {f"model.{k}": v for k, v in weights.items()},
                         options=options)
    set_optimizer_state_dict(objective, _inner(optimizer), optimizer_state, options=options)


def whole_model(accelerator: Accelerator, objective: torch.nn.Module, model):
    """The model with whole weights (FSDP: a CPU copy on every rank; else the model)."""
    return gather_whole_model(objective, model) if is_fsdp(accelerator) else model


def gather_whole_model(objective: torch.nn.Module, model):
    """A CPU copy of ``model`` with the whole weights of the sharded ``objective``, on every
    rank (a collective)."""
    # Not FULL: with cpu_offload the ranks but 0 get an empty dict. Each rank holds the whole
    # weights on its device until they are copied into the CPU model.
    weights = get_model_state_dict(objective, options=StateDictOptions(full_state_dict=True))
    copy = build_model(model.spec)
    copy.load_state_dict({k.removeprefix("model."): v for k, v in weights.items()})
    copy.tokenizer = getattr(model, "tokenizer", None)
    return copy


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper -> torch's
