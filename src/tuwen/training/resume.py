"""Checkpoints of a training run: save every rank's state, and resume from the newest
complete checkpoint exactly (weights, optimiser, schedule, grad scaler, RNG, data position).
The on-disk format and its atomic writes are ``checkpoint.py``'s."""

from __future__ import annotations

import json
from pathlib import Path

from tuwen.errors import TuwenError
from tuwen.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    prune,
    restore_rank_rng,
    save_checkpoint,
    write_best,
)
from tuwen.training.distributed import full_states, gather_rng_states, is_fsdp, load_full_states
from tuwen.training.parts import Parts
from tuwen.training.state import TrainState


def check_resumable(ckpt_dir: Path, processes: int) -> None:
    """Before a resumed run writes anything (its config.yaml first): the newest checkpoint
    was written by ``processes`` processes, or the one-line refusal of
    ``check_same_processes``. Its state.json holds one RNG entry per process."""
    path = latest_checkpoint(ckpt_dir)
    if path is not None:
        saved = len(json.loads((path / "state.json").read_text())["rng"])
        check_same_processes(path, saved, processes)


def resume_state(parts: Parts, ckpt_dir: Path) -> TrainState | None:
    """Restore the newest complete checkpoint (weights, optimiser, schedule, grad scaler,
    this rank's RNG); None when there is none."""
    path = latest_checkpoint(ckpt_dir)
    if path is None:
        return None
    fsdp = is_fsdp(parts.accelerator)
    saved, optimizer_state, rng_states = load_checkpoint(path, None if fsdp else parts.model)
    check_same_processes(path, len(rng_states), parts.accelerator.num_processes)
    if fsdp:
        load_full_states(parts.objective, parts.optimizer, load_weights(path), optimizer_state)
    else:
        parts.optimizer.load_state_dict(optimizer_state)
    parts.schedule.load_state_dict(saved["scheduler"])
    if parts.accelerator.scaler is not None and saved.get("scaler"):
        parts.accelerator.scaler.load_state_dict(saved["scaler"])
    accelerator = parts.accelerator
    restore_rank_rng(rng_states, accelerator.process_index, accelerator.num_processes)
    accelerator.print(f"resumed from {path} at step {saved['train']['step']}")
    return TrainState(**saved["train"])


def check_same_processes(path: Path, saved: int, now: int) -> None:
    """A checkpoint resumes on the number of processes that wrote it, or not at all.

    Its data position counts the batches of one process (rank r of N takes batches r, r+N,
    ...), and its RNG states are one per process: on another count the run would repeat or
    skip batches and draw other random numbers, silently. Refusing is the deliberate choice
    (docs/training.md, "Resume on another number of processes")."""
    if saved != now:
        raise TuwenError(f"{path} was written by {saved} process{'es' * (saved > 1)} and this "
                         f"run has {now}: resume with {saved} (e.g. torchrun --nproc_per_node "
                         f"{saved}, or the same nodes), or start a new run directory; on another "
                         "count the data order and random draws would not continue")


def save(parts: Parts, ckpt_dir: Path, state: TrainState, keep_last: int,
         best: bool = False) -> None:
    """A checkpoint of every rank's state, written by the main process (call on all ranks);
    with ``best``, it is also recorded as the best one (``parts.best``)."""
    accelerator = parts.accelerator
    rng_states = gather_rng_states()
    if is_fsdp(accelerator):
        weights, optimizer_state = full_states(parts.objective, parts.optimizer)
    else:
        weights, optimizer_state = parts.model, parts.optimizer.state_dict()
    if accelerator.is_main_process:
        scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
        save_checkpoint(ckpt_dir, state.step, weights, optimizer_state,
                        {"train": vars(state), "scheduler": parts.schedule.state_dict(),
                         "scaler": scaler, "world_size": accelerator.num_processes},
                        rng_states)
        prune(ckpt_dir, keep_last)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and best:
        write_best(ckpt_dir, state.step, *parts.best)
