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
from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks.saved_model import load_text_assets
from tuwen.tasks.table import TASKS

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
                                 text_tokenizer=loaded["text_tokenizer"])
        return {k: metrics[k] for k in METRIC_SECTIONS if k in metrics}

    return evaluate
