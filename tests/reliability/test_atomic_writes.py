"""A full disk or a permission error while writing leaves the previous version intact and
says so in one line."""

import errno
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tiny import tiny_overrides
from tuwen import fsio
from tuwen.config import load_config
from tuwen.fsio import WriteError
from tuwen.training import checkpoint
from tuwen.training.checkpoint import list_checkpoints, problem, save_checkpoint
from tuwen.training.loop import train


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_a_failed_write_keeps_the_old_file_and_names_it(tmp_path, monkeypatch):
    path = tmp_path / "index.json"
    fsio.write_json(path, {"version": 1})
    monkeypatch.setattr(fsio.os, "replace", no_space)
    with pytest.raises(WriteError, match=r"index.json: could not write \(No space left on "
                                         r"device\); the previous version is intact"):
        fsio.write_json(path, {"version": 2})
    assert path.read_text() == '{"version": 1}' and leftovers(tmp_path) == []


def test_an_error_inside_the_writer_removes_the_temporary_file(tmp_path):
    path = tmp_path / "data.bin"
    with pytest.raises(ValueError):
        with fsio.atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise ValueError("the writer failed")
    assert not path.exists() and leftovers(tmp_path) == []


def test_a_failed_checkpoint_dir_keeps_the_older_checkpoints(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    rng = [checkpoint.rng_state()]
    save_checkpoint(tmp_path, 2, model, {"state": {}}, {"step": 2}, rng)
    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    with pytest.raises(WriteError, match=r"step-4: could not write \(No space left on device\)"):
        save_checkpoint(tmp_path, 4, model, {"state": {}}, {"step": 4}, rng)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-2"]
    assert problem(tmp_path / "step-2") is None and leftovers(tmp_path) == []


def test_rewriting_a_checkpoint_that_fails_keeps_its_old_version(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    rng = [checkpoint.rng_state()]
    save_checkpoint(tmp_path, 2, model, {"state": {}}, {"step": 2}, rng)
    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    with pytest.raises(WriteError, match="the previous version is intact"):
        save_checkpoint(tmp_path, 2, model, {"state": {}}, {"step": 2}, rng)
    assert problem(tmp_path / "step-2") is None


FILE_SIZE_LIMIT = """
import resource, signal, sys, torch
from pathlib import Path
from tuwen.training.checkpoint import rng_state, save_checkpoint
from tuwen.errors import TuwenError
directory = Path(sys.argv[1])
model = torch.nn.Linear(64, 64)
save_checkpoint(directory, 2, model, {{}}, {{"step": 2}}, [rng_state()])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
try:
    save_checkpoint(directory, 4, torch.nn.Linear(256, 256), {{}}, {{"step": 4}}, [rng_state()])
except TuwenError as err:
    print(err)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX resource limits")
def test_a_disk_that_fills_up_while_saving_weights_leaves_the_last_checkpoint(tmp_path):
    # RLIMIT_FSIZE stands in for a small tmpfs: every write beyond 64 KiB fails (EFBIG).
    script = FILE_SIZE_LIMIT.format(limit=64 * 1024)
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "step-4: could not write" in out.stdout and "File too large" in out.stdout
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-2"]
    assert problem(tmp_path / "step-2") is None and leftovers(tmp_path) == []


def test_a_model_save_that_fails_keeps_the_previous_weights(tiny_model, tmp_path, monkeypatch):
    tiny_model.save_pretrained(tmp_path)
    before = load_file(tmp_path / "model.safetensors")
    with torch.no_grad():
        next(tiny_model.parameters()).add_(1.0)
    monkeypatch.setattr(fsio, "_fsync_file", no_space)  # the disk fills before the sync
    with pytest.raises(WriteError, match=r"config.json: could not write"):
        tiny_model.save_pretrained(tmp_path)
    after = load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert leftovers(tmp_path) == []


def test_a_run_whose_disk_fails_mid_run_stops_with_one_line_and_resumes(tiny_shapes, tmp_path,
                                                                        monkeypatch):
    config = load_config(None, tiny_overrides(tiny_shapes, max_steps=6, save_every=2))
    run = tmp_path / "run"
    calls = {"n": 0}
    real_save = checkpoint._torch_save

    def fails_from_the_second_checkpoint(obj, path):
        calls["n"] += 1
        if calls["n"] > 2:  # two torch files per checkpoint: step-2 is written, step-4 fails
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        real_save(obj, path)

    monkeypatch.setattr(checkpoint, "_torch_save", fails_from_the_second_checkpoint)
    with pytest.raises(WriteError, match=r"step-4: could not write \(Permission denied\)"):
        train(config, run, show_progress=False)
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-2"]
    monkeypatch.setattr(checkpoint, "_torch_save", real_save)
    assert train(config, run, resume=True, show_progress=False).steps == 6
