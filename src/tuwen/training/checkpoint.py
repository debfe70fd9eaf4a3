"""Checkpoints: atomic, verifiable, and enough to continue a run exactly.

``checkpoints/step-N/`` holds

- ``model.safetensors`` — the weights;
- ``optimizer.pt`` — the optimiser state (tensors and numbers only; loaded with
  ``torch.load(weights_only=True)``, nothing is unpickled);
- ``rng.pt`` — the torch CPU (and CUDA) RNG state of every rank;
- ``state.json`` — step, epoch, data position, LR schedule, grad scaler, and the Python and
  NumPy RNG states of every rank;
- ``manifest.json`` — the sha256 of each file above, written last.

Everything is written into ``.tmp-step-N/``, synced and renamed (``tuwen.fsio.atomic_dir``),
so a kill at any moment leaves either the whole checkpoint or none. A checkpoint whose
manifest is missing, or whose files are missing or do not match their hash, is skipped by
``latest_checkpoint`` with a warning.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from tuwen.errors import TuwenError
from tuwen.fsio import atomic_dir, sha256, write_json

MANIFEST = "manifest.json"
FILES = ("model.safetensors", "optimizer.pt", "rng.pt", "state.json")
BEST = "best.json"


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped because it is incomplete or corrupt."""


# ---------------------------------------------------------------- RNG states

def rng_state() -> tuple[dict, dict]:
    """This process's RNG states: (tensors for rng.pt, JSON-able Python/NumPy states)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state()
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    plain = {"python": [py_version, list(py_state), py_gauss],
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, plain


def restore_rng(tensors: dict, plain: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    version, state, gauss = plain["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


# ---------------------------------------------------------------- writing

def _torch_save(obj, path: Path) -> None:
    with path.open("wb") as f:  # a file object: a full disk is an OSError, not torch's own
        torch.save(obj, f)


def save_checkpoint(directory: Path, step: int, model: torch.nn.Module | dict,
                    optimizer_state: dict, state: dict,
                    rng_states: list[tuple[dict, dict]]) -> Path:
    """Write ``directory/step-{step}`` atomically; ``model`` is the module or its whole
    state dict (FSDP); ``rng_states`` holds one entry per rank. A failed write (full disk,
    no permission) raises ``WriteError`` and leaves the older checkpoints as they were."""
    final = directory / f"step-{step}"
    with atomic_dir(final, errors=(SafetensorError,)) as tmp:
        if isinstance(model, dict):  # tied weights become two copies; load_model accepts that
            save_file({k: v.contiguous().clone() for k, v in model.items()},
                      str(tmp / "model.safetensors"))
        else:
            save_model(model, str(tmp / "model.safetensors"))
        _torch_save(optimizer_state, tmp / "optimizer.pt")
        _torch_save({"ranks": [tensors for tensors, _ in rng_states]}, tmp / "rng.pt")
        (tmp / "state.json").write_text(
            json.dumps({**state, "rng": [plain for _, plain in rng_states]}))
        (tmp / MANIFEST).write_text(
            json.dumps({"step": step, "files": {n: sha256(tmp / n) for n in FILES}}))
    return final


# ---------------------------------------------------------------- finding and checking

def list_checkpoints(directory: Path) -> list[Path]:
    found = [p for p in directory.glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def step_of(path: Path) -> int:
    return int(path.name[5:])


def problem(path: Path) -> str | None:
    """Why ``path`` cannot be resumed from (missing files, hash mismatch), or None."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return f"incomplete checkpoint (no {MANIFEST})"
    try:
        expected = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"corrupt {MANIFEST}"
    missing = [name for name in FILES if not (path / name).is_file()]
    if missing:
        return f"incomplete checkpoint (missing {', '.join(missing)})"
    bad = [name for name in FILES if sha256(path / name) != expected.get(name)]
    if bad:
        return f"corrupt checkpoint (sha256 mismatch: {', '.join(bad)})"
    return None


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest checkpoint that verifies; each newer broken one is skipped with a warning."""
    for path in reversed(list_checkpoints(directory)):
        reason = problem(path)
        if reason is None:
            return path
        warnings.warn(f"{path}: {reason}; falling back to the previous checkpoint",
                      CheckpointWarning, stacklevel=2)
    return None


def read_best(directory: Path) -> dict | None:
    path = directory / BEST
    return json.loads(path.read_text()) if path.is_file() else None


def write_best(directory: Path, step: int, metric: str, value: float) -> None:
    write_json(directory / BEST, {"step": step, "metric": metric, "value": value})


def prune(directory: Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` checkpoints and the best one (``best.json``)."""
    best = read_best(directory)
    for old in list_checkpoints(directory)[:-keep_last]:
        if best is None or step_of(old) != best["step"]:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- loading

def load_checkpoint(path: Path, model: torch.nn.Module | None) -> tuple[dict, dict, list]:
    """Verify ``path``, load the weights into ``model`` (None: leave them to the caller,
    see ``load_weights``); returns (state, optimizer state, per-rank RNG states as
    (tensors, plain) pairs)."""
    reason = problem(path)
    if reason is not None:
        raise TuwenError(f"{path}: {reason}")
    if model is not None:
        load_weights_into(path, model)
    optimizer_state = _torch_load(path / "optimizer.pt")
    state = json.loads((path / "state.json").read_text())
    tensors = _torch_load(path / "rng.pt")["ranks"]
    return state, optimizer_state, list(zip(tensors, state.pop("rng")))


def _torch_load(path: Path):
    """Tensors, numbers and containers only: a pickle that would build any other object
    (run code) is refused."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        raise TuwenError(f"{path}: refused to load (not plain tensors and numbers; "
                         "tuwen never unpickles objects)") from None


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def load_weights_into(path: Path, model: torch.nn.Module) -> None:
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except (RuntimeError, OSError, SafetensorError) as err:
        raise TuwenError(f"{path}: checkpoint weights do not load "
                         f"({str(err).splitlines()[-1].strip()})") from None
    if missing or unexpected:
        raise TuwenError(f"{path}: checkpoint weights do not fit this model "
                         f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")


def restore_rank_rng(rng_states: list, rank: int, world_size: int) -> None:
    """Restore this rank's RNG; a run resumed on a different number of processes reuses
    the saved ranks cyclically (the data order stays exact, random draws do not)."""
    if len(rng_states) != world_size and rank == 0:
        warnings.warn(f"checkpoint has RNG states for {len(rng_states)} processes, resuming "
                      f"on {world_size}", CheckpointWarning, stacklevel=2)
    tensors, plain = rng_states[rank % len(rng_states)]
    restore_rng(tensors, plain)
