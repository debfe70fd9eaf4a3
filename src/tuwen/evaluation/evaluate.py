"""Evaluate a model on one split: every task's evaluator, then the files.

Each task of the table (``tuwen.tasks.table``) evaluates itself: it runs its batched
inference, scores the output with the metrics papers report and returns a ``TaskResult``:
its keys of ``metrics.json``, its part of the protocol record and its lines of
``predictions.jsonl``. ``evaluate_split`` assembles them into ``metrics.json`` (keys as in
DESIGN.md §4, plus the protocol used) and ``predictions.jsonl``; ``evaluate_run`` does so for
a run's saved model and writes the report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tuwen.config import EvalConfig, load_config
from tuwen.data.answers import AnswerVocab
from tuwen.data.images import ImageTransform
from tuwen.data.prepare import SplitData, read_split
from tuwen.errors import ConfigError
from tuwen.evaluation.report import write_report
from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks.base import Evaluation, TaskResult
from tuwen.tasks.eval_set import EvalSet, select_eval_set
from tuwen.tasks.metrics.grounding import Scenes, load_scenes
from tuwen.tasks.metrics.protocol import base_protocol, ids_sha256
from tuwen.tasks.saved_model import load
from tuwen.tasks.table import TASKS, task_options


def run_evaluators(ev: Evaluation, data: EvalSet) -> list[TaskResult]:
    """Every task's evaluator (those ``eval.tasks`` names; null: all) that the data has labels
    for, in table order."""
    wanted = ev.cfg.tasks
    known = [t.metric for t in TASKS.values() if t.metric]
    if unknown := [name for name in wanted or () if name not in known]:
        raise ConfigError(f"eval.tasks: unknown evaluator {unknown[0]!r} (known: "
                          f"{', '.join(known)})")
    results = [task.evaluate(ev, data) for task in TASKS.values()
               if task.metric is not None and (wanted is None or task.metric in wanted)]
    return [r for r in results if r is not None]


def assemble_metrics(data: EvalSet, results: Sequence[TaskResult],
                     text_normalization: dict) -> dict:
    """``metrics.json``: the counts, each task's metrics, then the protocol of them all
    (``text_normalization``: the model's text settings, as its questions were read)."""
    protocol = base_protocol(data.split, source="tuwen eval", n_images=len(data.captions),
                             n_questions=len(data.questions))
    protocol.update(image_ids_sha256=ids_sha256([r.image_id for r in data.captions]),
                    question_ids_sha256=ids_sha256([q.question_id for q in data.questions]),
                    text_normalization=text_normalization)
    metrics: dict = {"split": data.split, "n_images": len(data.captions),
                     "n_questions": len(data.questions), "skipped": len(data.skipped)}
    for result in results:
        metrics.update(result.metrics)
        protocol.update(result.protocol)
    return {**metrics, "protocol": protocol, "skipped_reasons": data.skipped[:20]}


def write_outputs(out_dir: Path, metrics: dict, results: Sequence[TaskResult]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with (out_dir / "predictions.jsonl").open("w") as f:
        for line in (line for result in results for line in result.predictions):
            f.write(json.dumps(line) + "\n")


@torch.no_grad()
def evaluate_split(model: ImageTextModel, tokenizer, vocab: AnswerVocab | None, data: SplitData,
                   cfg: EvalConfig, out_dir: Path, max_length: int,
                   show_progress: bool = True,
                   scenes: Scenes | None = None, text_tokenizer: Any = None,
                   options: dict[str, Any] | None = None) -> dict:
    """Every task of ``cfg.tasks`` on ``data`` -> ``out_dir/{metrics.json,predictions.jsonl}``.
    With ``scenes`` (shapes data: every image's objects) ``metrics["grounding"]`` says how much
    of the fusion's attention lands on the objects relative-position questions name.
    ``tokenizer`` is the language model's; ``text_tokenizer`` the text encoder's own (None:
    the language model's serves both); ``options`` each task's (tasks.table.task_options;
    None: the defaults)."""
    model.eval()
    ev = Evaluation(model, tokenizer, vocab, cfg, max_length, show_progress, text_tokenizer,
                    scenes, options or {})
    eval_set = select_eval_set(data, cfg, ImageTransform.for_model(model.spec), show_progress)
    results = run_evaluators(ev, eval_set)
    metrics = assemble_metrics(eval_set, results, model.spec.text.model_dump(mode="json"))
    write_outputs(out_dir, metrics, results)
    return metrics


def evaluate_run(run_dir: str | Path, split: str, *, tasks: list[str] | None = None,
                 overrides: list[str] | None = None, show_progress: bool = True) -> dict:
    """Evaluate ``RUN/model`` on ``split`` of the run's own data config -> ``RUN/eval/<split>/``."""
    run_dir = Path(run_dir)
    # the run's config, its training checks aside: evaluation may read other sources
    config = load_config(run_dir / "config.yaml", overrides)
    if tasks:
        config.eval.tasks = tasks
    saved = load(run_dir / "model")
    data = read_split(config.data, split)
    scenes = load_scenes(config.data.root)  # shapes data: the objects of every image
    metrics = evaluate_split(saved.model, saved.tokenizer, saved.vocab, data, config.eval,
                             run_dir / "eval" / split, config.data.max_text_length, show_progress,
                             scenes=scenes, text_tokenizer=saved.text_tokenizer,
                             options=task_options(config))
    write_report(run_dir / "eval" / split, run_dir, show_progress=show_progress)
    return metrics
