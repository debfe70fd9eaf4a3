"""``tuwen train``: the training loop with evaluation wired in as its validation callback.

Training does not import evaluation (layering); this is where the two meet. At each
``train.eval_every`` the callback scores the model on the validation subset with the same
metrics as ``tuwen eval`` (greedy captions, to stay quick) and writes them to
``RUN/eval/val-during-training/``.
"""

from __future__ import annotations

from pathlib import Path

from tuwen.config import Config
from tuwen.data.prepare import read_split
from tuwen.evaluation.evaluate import evaluate_split
from tuwen.evaluation.model_card import write_training_card
from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks.saved_model import load_text_assets
from tuwen.tasks.table import TASKS, task_options
from tuwen.training.loop import TrainResult, train

METRIC_SECTIONS = tuple(t.metric for t in TASKS.values() if t.metric)


def validation_metrics(config: Config, run_dir: Path):
    """``evaluate(model, step) -> {"caption": {...}, "retrieval": {...}, "vqa": {...}}``."""
    cfg = config.eval.model_copy(update={"max_images": config.train.val_max_images,
                                         "decoding": "greedy"})
    loaded: dict = {}

    def evaluate(model: ImageTextModel, step: int) -> dict:
        if not loaded:  # the run writes its tokenizer and vocabulary before the first step
            tokenizer, text_tokenizer, vocab = load_text_assets(run_dir / "model")
            loaded.update(tokenizer=tokenizer, text_tokenizer=text_tokenizer, vocab=vocab,
                          data=read_split(config.data, config.data.val_split))
        metrics = evaluate_split(model, loaded["tokenizer"], loaded["vocab"], loaded["data"], cfg,
                                 run_dir / "eval" / "val-during-training",
                                 config.data.max_text_length, show_progress=False,
                                 text_tokenizer=loaded["text_tokenizer"],
                                 options=task_options(config))
        return {k: metrics[k] for k in METRIC_SECTIONS if k in metrics}

    return evaluate


def record_training(config: Config, result: TrainResult) -> None:
    """The model card of a run that finished (not one stopped by a signal: it has no final
    model yet)."""
    if result.stopped_by not in ("SIGTERM", "SIGINT"):
        write_training_card(config, result.model_dir, steps=result.steps,
                            elapsed_s=result.elapsed_s, stopped_by=result.stopped_by)


def run_training(config: Config, run_dir: str | Path, *, resume: bool = False,
                 show_progress: bool = True) -> TrainResult:
    """``train`` with validation metrics wired in, then the model card."""
    run_dir = Path(run_dir)
    evaluate = validation_metrics(config, run_dir) if config.train.eval_every else None
    result = train(config, run_dir, resume=resume, show_progress=show_progress,
                   evaluate=evaluate)
    record_training(config, result)
    return result

