"""Training runs in subprocesses with a chosen number of CPU threads (the suite pins one)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tiny import tiny_overrides
from tuwen.config import load_config, save_config
from tuwen.training.checkpoint import list_checkpoints


def write_config(data_root: Path, path: Path, **train) -> Path:
    train = {"max_steps": 8, "save_every": 2, "log_every": 1, **train}
    save_config(load_config(None, tiny_overrides(data_root, **train)), path)
    return path


def start(config_path: Path, run: Path, *extra: str, threads: int = 2) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads)}
    log = (run.parent / f"{run.name}.log").open("a")  # a file: a full pipe would block it
    proc = subprocess.Popen([sys.executable, "-m", "tuwen", "train", str(config_path), "--out",
                             str(run), *extra], env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log.name
    return proc


def output(proc: subprocess.Popen) -> str:
    return Path(proc.log_path).read_text()


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    proc.wait(timeout=timeout)
    assert proc.returncode == 0, output(proc)
    return output(proc)


def newest_step(run: Path) -> int:
    steps = [int(p.name[5:]) for p in list_checkpoints(run / "checkpoints")]
    return max(steps, default=0)


def wait_for(proc: subprocess.Popen, ready, timeout: float = 240, poll: float = 0.01) -> None:
    """Poll ``ready()`` until true; fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"training ended first:\n{output(proc)}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(poll)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def differing(a: Path, b: Path) -> list[str]:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return [k for k in wa if not torch.equal(wa[k], wb[k])]
