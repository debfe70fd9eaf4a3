"""Checkpoints: written to a temporary folder and renamed, so a kill never leaves half a one.

``step-N/`` holds the model (safetensors), the optimiser state, and ``state.json`` with the
step, data position, elapsed time and RNG states. Nothing is unpickled on load
(``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from tuwen.errors import TuwenError

REQUIRED = ("model.safetensors", "optimizer.pt", "rng.pt", "state.json")


def rng_state() -> tuple[dict, dict]:
    tensors = {"torch": torch.get_rng_state()}
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    plain = {"python": [py_version, list(py_state), py_gauss],
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, plain


def restore_rng(tensors: dict, plain: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    version, state, gauss = plain["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict) -> Path:
    final = directory / f"step-{state['step']}"
    tmp = directory / f".tmp-step-{state['step']}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    tensors, plain = rng_state()
    torch.save(tensors, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "rng": plain}))  # last: marks complete
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    found = [p for p in directory.glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def prune(directory: Path, keep_last: int) -> None:
    for old in list_checkpoints(directory)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in REQUIRED)


def latest_checkpoint(directory: Path) -> Path | None:
    for path in reversed(list_checkpoints(directory)):
        if is_complete(path):
            return path
    return None


def load_checkpoint(path: Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer) -> dict:
    if not is_complete(path):
        missing = [n for n in REQUIRED if not (path / n).is_file()]
        raise TuwenError(f"{path}: incomplete checkpoint (missing {', '.join(missing)})")
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except (RuntimeError, OSError, SafetensorError) as err:
        raise TuwenError(f"{path}: checkpoint weights do not load "
                         f"({str(err).splitlines()[-1].strip()})") from None
    if missing or unexpected:
        raise TuwenError(f"{path}: checkpoint weights do not fit this model "
                         f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    state = json.loads((path / "state.json").read_text())
    restore_rng(torch.load(path / "rng.pt", weights_only=True), state.pop("rng"))
    return state
