"""A checkpoint of another process count is refused before the resumed run writes anything:
its config.yaml, log and checkpoints stay as they were."""

import json

import pytest

from tiny import tiny_overrides
from tuwen import fsio
from tuwen.config import load_config
from tuwen.errors import TuwenError
from tuwen.training.checkpoint import MANIFEST, list_checkpoints
from tuwen.training.loop import train


def claim_two_processes(path):
    """Rewrite a one-process checkpoint as if two processes had written it (and re-sign it)."""
    state = json.loads((path / "state.json").read_text())
    state["rng"] = state["rng"] * 2
    (path / "state.json").write_text(json.dumps(state))
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"]["state.json"] = fsio.sha256(path / "state.json")
    (path / MANIFEST).write_text(json.dumps(manifest))


def test_a_refused_resume_writes_nothing(tiny_shapes, tmp_path):
    run = tmp_path / "run"
    config = load_config(None, tiny_overrides(tiny_shapes, max_steps=2, save_every=2))
    train(config, run, show_progress=False)
    claim_two_processes(list_checkpoints(run / "checkpoints")[-1])
    before = {name: (run / name).read_bytes() for name in ("config.yaml", "metrics.jsonl")}
    longer = load_config(None, tiny_overrides(tiny_shapes, max_steps=4, save_every=2))
    with pytest.raises(TuwenError, match=r"was written by 2 processes and this run has 1"):
        train(longer, run, resume=True, show_progress=False)
    assert {name: (run / name).read_bytes() for name in before} == before
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-2"]
