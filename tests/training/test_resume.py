"""Exact resume through the real CLI: SIGTERM saves and exits, SIGKILL loses nothing saved,
and the resumed run ends bitwise equal to one that was never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tiny import tiny_overrides
from tuwen.config import load_config, save_config
from tuwen.training.checkpoint import CheckpointWarning, list_checkpoints, problem
from tuwen.training.loop import train

STEPS = 24


def tiny_config(root, **train):
    # 64 images / batch 8: 8 batches per epoch, so the kills land mid-epoch
    train = {"max_steps": STEPS, "save_every": 2, "log_every": 1, **train}
    return load_config(None, tiny_overrides(root, **train))


def start(config_path, run, *extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "tuwen", "train", str(config_path), "--out",
                             str(run), *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(proc, run, min_step, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = [int(p.name[5:]) for p in list_checkpoints(run / "checkpoints")]
        if steps and max(steps) >= min_step:
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended before step {min_step}:\n{proc.stdout.read()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no checkpoint in time")


def weights(run):
    return load_file(run / "model" / "model.safetensors")


@pytest.mark.slow  # three Python processes
def test_sigterm_then_sigkill_then_resume_is_bitwise_identical(tiny_shapes, tmp_path):
    config = tiny_config(tiny_shapes)
    config_path = tmp_path / "tiny.yaml"
    save_config(config, config_path)
    train(config, tmp_path / "full", show_progress=False)

    run = tmp_path / "run"
    proc = start(config_path, run)
    wait_for_checkpoint(proc, run, 4)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    stopped = int(out.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert 4 <= stopped < STEPS
    newest = list_checkpoints(run / "checkpoints")[-1]
    assert newest.name == f"step-{stopped}" and problem(newest) is None
    assert not (run / "model" / "model.safetensors").exists()  # no final model when preempted

    proc = start(config_path, run, "--resume")
    wait_for_checkpoint(proc, run, stopped + 4)
    assert proc.poll() is None  # killed mid-run, not after it
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)

    result = train(config, run, resume=True, show_progress=False)
    assert result.steps == STEPS and result.stopped_by == "max_steps"
    a, b = weights(tmp_path / "full"), weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logged = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, STEPS + 1))  # each step logged once across three processes


def test_resume_falls_back_past_a_corrupt_checkpoint(tiny_shapes, tmp_path):
    class Preempted(Exception):
        pass

    def preempt(step, model):
        if step == 4:
            raise Preempted

    full, run = tmp_path / "full", tmp_path / "run"
    train(tiny_config(tiny_shapes, max_steps=5), full, show_progress=False)
    with pytest.raises(Preempted):
        train(tiny_config(tiny_shapes, max_steps=5), run, show_progress=False,
              on_checkpoint=preempt)
    damaged = run / "checkpoints" / "step-4" / "optimizer.pt"
    damaged.write_bytes(damaged.read_bytes()[:-8])  # truncated: hash mismatch
    with pytest.warns(CheckpointWarning, match=r"step-4: corrupt checkpoint"):
        result = train(tiny_config(tiny_shapes, max_steps=5), run, resume=True,
                       show_progress=False)
    assert result.steps == 5
    a, b = weights(full), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)  # resumed from step-2, still exact


def test_sigterm_in_process_saves_the_current_step_and_stops(tiny_shapes, tmp_path):
    def preempt(step, model):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # handled: a flag the loop reads after step 3

    run = tmp_path / "run"
    result = train(tiny_config(tiny_shapes, max_steps=8), run, show_progress=False,
                   on_checkpoint=preempt)
    assert result.stopped_by == "SIGTERM" and result.steps == 3
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-2", "step-3"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler removed afterwards
