"""One run of a sweep or an ablation: train a config into a run directory, evaluate it on
a split, and read back what the run wrote (metrics.json, metrics.jsonl, the weights).

Each trial is an ordinary run directory (``tuwen eval RUN`` works on it); results are read
from the files ``tuwen train`` and ``tuwen eval`` write, the stable contract.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuwen.config import Config
from tuwen.errors import ConfigError

# metrics.json keys by the evaluation task that writes them (DESIGN.md section 4)
METRIC_KEYS = {
    "caption": tuple(f"caption.{k}" for k in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor",
                                              "rouge_l", "cider", "distinct_captions")),
    "retrieval": tuple(f"retrieval.{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)),
    "vqa": ("vqa.accuracy",),
    "classify": ("classify.top1", "classify.top5"),
}
# keys named by the data (question and answer types) or the protocol: checked by prefix
METRIC_PREFIXES = {"caption_greedy.": "caption", "retrieval_itc.": "retrieval",
                   "vqa.by_question_type.": "vqa", "vqa.by_answer_type.": "vqa",
                   "grounding.": "vqa"}

Report = Callable[[int, dict[str, float]], None]


def check_metric(metric: str, config: Config) -> None:
    """``metric`` is a metrics.json key that evaluating ``config`` writes, or an error."""
    task = next((t for t, keys in METRIC_KEYS.items() if metric in keys), None)
    if task is None:
        task = next((t for p, t in METRIC_PREFIXES.items()
                     if metric.startswith(p) and len(metric) > len(p)), None)
    if task is None:
        known = ", ".join(k for keys in METRIC_KEYS.values() for k in keys)
        raise ConfigError(f"--metric {metric!r}: no evaluation writes this key (known: {known}, "
                          "vqa.by_question_type.<type>, vqa.by_answer_type.<type>)")
    if config.eval.tasks is not None and task not in config.eval.tasks:
        raise ConfigError(f"--metric {metric!r}: needs the {task} evaluation, which "
                          f"eval.tasks={config.eval.tasks} leaves out")


@dataclass
class Outcome:
    """What one finished run wrote, read back from its directory."""

    run_dir: Path
    metrics: dict[str, float]  # metrics.json of the evaluated split, flattened
    wall_s: float
    steps: int
    images_per_sec: float | None
    params: int


def train_and_evaluate(config: Config, run_dir: Path, split: str,
                       report: Report | None = None) -> Outcome:
    """Train (resuming from a checkpoint if the run was interrupted) and evaluate ``split``.

    ``report(step, metrics)`` receives the flattened validation metrics during training; it
    may raise to stop the run (a pruned trial)."""
    # imported here: a sweep worker starts (and waits, and checks its options) without torch
    from tuwen.apps.training import validation_metrics
    from tuwen.evaluation.evaluate import evaluate_run
    from tuwen.training.checkpoint import latest_checkpoint
    from tuwen.training.loop import train
    from tuwen.training.validation import flatten

    started = time.perf_counter()
    evaluate = None
    if config.train.eval_every is not None:
        inner = validation_metrics(config, run_dir)

        def evaluate(model, step: int) -> dict:
            metrics = inner(model, step)
            if report is not None:
                report(step, flatten(metrics))
            return metrics

    resume = latest_checkpoint(run_dir / "checkpoints") is not None
    result = train(config, run_dir, resume=resume, show_progress=False, evaluate=evaluate)
    if result.stopped_by in ("SIGTERM", "SIGINT"):
        raise KeyboardInterrupt(f"training stopped by {result.stopped_by}")
    evaluate_run(run_dir, split, show_progress=False)
    return read_outcome(run_dir, split, time.perf_counter() - started)


def read_outcome(run_dir: Path, split: str, wall_s: float) -> Outcome:
    from tuwen.training.validation import flatten

    metrics = json.loads((run_dir / "eval" / split / "metrics.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    speeds = [r["samples_per_sec"] for r in records if "samples_per_sec" in r]
    steps = max((r["step"] for r in records if "step" in r), default=0)
    return Outcome(run_dir, flatten(metrics), wall_s, steps,
                   sum(speeds) / len(speeds) if speeds else None,
                   parameter_count(run_dir / "model"))


def parameter_count(model_dir: Path) -> int:
    """Parameters stored in the saved model (read from the safetensors header only)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                shape = f.get_slice(name).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
    return total


def is_finished(run_dir: Path, split: str) -> bool:
    return (run_dir / "eval" / split / "metrics.json").is_file() and \
        (run_dir / "model").is_dir()
