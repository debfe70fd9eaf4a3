"""Checkpoint files: atomic layout, manifest hashes, fallback past broken ones, best kept."""

import json
import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from tuwen.errors import TuwenError
from tuwen.training.checkpoint import (
    CheckpointWarning,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune,
    restore_rank_rng,
    rng_state,
    save_checkpoint,
    sha256,
    write_best,
)


def write(directory, step, model=None):
    model = model or nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {"train": {"step": step}, "scheduler": {"factor": 0.5},
             "scaler": torch.amp.GradScaler("cpu").state_dict()}
    return save_checkpoint(directory, step, model, opt.state_dict(), state,
                           [rng_state(), rng_state()])


def test_layout_manifest_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    path = write(tmp_path, 7, model)
    assert path.name == "step-7" and not list(tmp_path.glob(".tmp-*"))
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 7
    for name, digest in manifest["files"].items():
        assert sha256(path / name) == digest
    fresh = nn.Linear(3, 2)
    state, opt_state, rngs = load_checkpoint(path, fresh)
    assert torch.equal(fresh.weight, model.weight)
    assert state["train"] == {"step": 7} and state["scaler"]["scale"] == 65536.0
    assert "exp_avg" in opt_state["state"][0] and len(rngs) == 2


def test_rng_states_restore_every_generator():
    saved = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rank_rng([saved, rng_state()], rank=0, world_size=2)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


@pytest.mark.parametrize("damage", ["missing", "hash", "manifest"])
def test_broken_newest_is_skipped_with_a_warning(tmp_path, damage):
    write(tmp_path, 2)
    newest = write(tmp_path, 4)
    if damage == "missing":
        (newest / "optimizer.pt").unlink()
    elif damage == "hash":
        data = bytearray((newest / "model.safetensors").read_bytes())
        data[-1] ^= 0xFF  # one flipped bit in the weights
        (newest / "model.safetensors").write_bytes(bytes(data))
    else:  # killed before the manifest: as if the rename had happened without it
        (newest / "manifest.json").unlink()
    with pytest.warns(CheckpointWarning, match="step-4"):
        assert latest_checkpoint(tmp_path).name == "step-2"
    with pytest.raises(TuwenError, match="step-4"):
        load_checkpoint(newest, nn.Linear(3, 2))


def test_tmp_dir_of_a_killed_save_is_ignored(tmp_path):
    write(tmp_path, 2)
    (tmp_path / ".tmp-step-4").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latest_checkpoint(tmp_path).name == "step-2"


def test_prune_keeps_last_k_and_the_best(tmp_path):
    for step in (1, 2, 3, 4, 5):
        write(tmp_path, step)
    write_best(tmp_path, 2, "val_loss", 0.5)
    prune(tmp_path, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-2", "step-4", "step-5"]
