"""Training logs: metrics.jsonl (one object per logged step), TensorBoard events, and
optionally Weights & Biases in offline mode (``wandb sync RUN/wandb/offline-run-*`` uploads);
``Window`` averages the steps between two log lines into one record."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tuwen import fsio
from tuwen.errors import ConfigError
from tuwen.training.state import TrainState
from tuwen.training.step import StepResult


def start_wandb(run_dir: Path, project: str, config: dict):
    try:
        import wandb
    except ImportError:
        raise ConfigError("train.wandb=true needs the wandb package (pip install wandb), "
                          "or set train.wandb=false") from None
    return wandb.init(project=project, dir=str(run_dir), mode="offline", config=config,
                      name=run_dir.name, resume="allow")


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool = True, wandb_project: str | None = None,
                 config: dict | None = None) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer = self.wandb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            if wandb_project is not None:
                self.wandb = start_wandb(run_dir, wandb_project, config or {})

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        step = record["step"]
        scalars = {k: v for k, v in record.items() if k != "step" and
                   isinstance(v, (int, float)) and math.isfinite(v)}
        for key, value in scalars.items():
            name = key.replace("loss_", "loss/").replace("grad_norm_", "grad_norm/")
            self.writer.add_scalar(name, value, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the file has no repeats."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        fsio.write_text(self.path, "".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


@dataclass
class Window:
    """Sums between two log lines."""

    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    steps: int = 0
    samples: int = 0
    start: float = field(default_factory=time.perf_counter)
    task_grad_norms: dict[str, float] = field(default_factory=dict)  # the latest measured

    def add(self, step: StepResult) -> None:
        self.sums["loss"] += step.total
        for name, value in step.losses.items():
            self.sums[f"loss_{name}"] += value
        for name, value in step.weights.items():
            self.sums[f"weight_{name}"] += value
        if step.grad_norm is not None:
            self.sums["grad_norm"] += step.grad_norm
        self.steps += 1
        self.samples += step.samples
        if step.task_grad_norms:
            self.task_grad_norms = step.task_grad_norms

    def record(self, state: TrainState, lr: float, world_size: int = 1) -> dict:
        """The metrics.jsonl line for ``state.step``: means over the window; starts a new one."""
        now = time.perf_counter()
        out = {"step": state.step, "epoch": state.epoch, "lr": lr,
               **{k: v / self.steps for k, v in self.sums.items()}, **self.task_grad_norms,
               "samples_per_sec": world_size * self.samples / max(now - self.start, 1e-9),
               "elapsed_s": round(state.elapsed_s, 2)}
        self.sums.clear()
        self.task_grad_norms = {}
        self.steps, self.samples, self.start = 0, 0, now
        return out
