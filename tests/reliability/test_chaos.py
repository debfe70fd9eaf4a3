"""Chaos: a 2-thread training run killed with SIGKILL at 5 random moments (one of them while
a checkpoint is being written) and resumed each time ends bitwise equal to an uninterrupted
run, and leaves no half-written checkpoint behind."""

import random
import signal
import time

import pytest
from runs import differing, finish, newest_step, start, wait_for, write_config

from tuwen.training.checkpoint import list_checkpoints, problem

STEPS = 24


def writing_a_checkpoint(run) -> bool:
    return any(p.name.startswith(".tmp-step-") for p in (run / "checkpoints").glob(".tmp-*"))


def kill_at(proc, run, rng: random.Random, during_save: bool) -> None:
    """SIGKILL while a checkpoint is being written, or after a random delay past the
    newest checkpoint."""
    if during_save:
        wait_for(proc, lambda: writing_a_checkpoint(run), poll=0.0005)
    else:
        wait_for(proc, lambda: (run / "checkpoints").is_dir())
        time.sleep(rng.uniform(0.0, 3.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.slow  # seven 2-thread training processes
def test_five_sigkills_and_resumes_end_bitwise_equal(tiny_shapes, tmp_path):
    config = write_config(tiny_shapes, tmp_path / "tiny.yaml", max_steps=STEPS, save_every=3,
                          keep_last=2)
    reference = start(config, tmp_path / "reference")
    run, rng, resume = tmp_path / "run", random.Random(17), []
    for kill in range(5):
        proc = start(config, run, *resume)
        kill_at(proc, run, rng, during_save=kill in (1, 3))
        resume = ["--resume"]
        leftovers = [p.name for p in (run / "checkpoints").glob(".*")]
        assert all(problem(p) is None for p in list_checkpoints(run / "checkpoints")), leftovers
    finish(start(config, run, "--resume"), timeout=1200)  # a loaded 2-core machine is slow
    finish(reference, timeout=1200)
    assert newest_step(run) == STEPS
    assert differing(tmp_path / "reference", run) == []
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")] == []
