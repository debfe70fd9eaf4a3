"""A task added from outside the package, through the table alone: its weight and options in
the config, its head in the model, its part of the batch, its loss in metrics.jsonl and its
metric in metrics.json, trained jointly with the built-in tasks. No other file changes."""

import json
from dataclasses import dataclass

import pytest
import torch
from pydantic import Field

from tiny import tiny_overrides
from tuwen.config import Section
from tuwen.errors import ConfigError
from tuwen.evaluation.evaluate import evaluate_run
from tuwen.models.heads import head_spec
from tuwen.tasks.base import Evaluation, Task, TaskResult
from tuwen.tasks.eval_set import EvalSet
from tuwen.tasks.saved_model import load
from tuwen.tasks.table import TASKS, load_run_config
from tuwen.training.loop import train


@dataclass
class HasRed:
    """The toy task's part of a batch: does each image's first caption name red?"""

    target: torch.Tensor  # (B,) 1.0 or 0.0


class RedOptions(Section):
    word: str = Field("red", description="The word whose presence the head predicts.")


def red_logits(model, pixel_values: torch.Tensor) -> torch.Tensor:
    return model.red_head(model.encode_image(pixel_values).pooled).squeeze(-1)


class RedTask(Task):
    """Predict from the image alone whether its caption names a colour word."""

    name = "red"
    labels = "caption"
    metric = "red"
    description = "does the caption name the word? (a binary head on the pooled image)"
    Options = RedOptions

    def heads(self, spec):
        return {"red_head": head_spec("linear", dim=spec.model.hidden_size, out=1)}

    def collate(self, tools, options, spec, train):
        def collate(batch):
            if batch.captions is None:
                return None
            firsts = {}
            for image, text in zip(batch.captions.image.tolist(), batch.captions.texts):
                firsts.setdefault(image, text)
            return HasRed(torch.tensor([float(options.word in firsts.get(i, "").split())
                                        for i in range(batch.size)]))
        return collate

    def loss(self, step, options):
        part = step.batch.part(self.name)
        if part is None:
            return None
        logits = step.model.red_head(step.image.pooled).squeeze(-1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, part.target)

    def evaluate(self, ev: Evaluation, data: EvalSet) -> TaskResult | None:
        if not data.captions:
            return None
        word = ev.options_of(self).word
        truth = torch.tensor([any(word in c.split() for c in r.captions[:1])
                              for r in data.captions])
        with torch.no_grad():
            said = red_logits(ev.model, data.captioned_pixels()) > 0
        accuracy = 100.0 * float((said == truth).float().mean())
        return TaskResult({"red": {"accuracy": accuracy, "positives": int(truth.sum())}},
                          {"red": {"word": word}})


@pytest.fixture
def red_task(monkeypatch):
    monkeypatch.setitem(TASKS, "red", RedTask())


def test_an_added_task_trains_jointly_and_is_evaluated(red_task, tiny_shapes, tmp_path):
    sets = tiny_overrides(tiny_shapes, max_steps=4, log_every=2, save_every=4,
                          task_grad_norm_every=2)
    config = load_run_config(None, [*sets, "train.tasks.red=0.5",
                                    "train.task_options.red.word=red",
                                    "train.task_schedule=[{step: 0, red: 0.5}, {step: 4, red: 1}]",
                                    ])
    train(config, tmp_path / "run", show_progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all({"loss_red", "loss_caption", "loss_itc", "loss_itm", "loss_vqa"} <= set(line)
               for line in lines if "loss" in line)
    assert any(line.get("grad_norm_red", 0) > 0 for line in lines)  # per-task gradient norms
    saved = load(tmp_path / "run" / "model")
    assert "red_head" in saved.model.head_names
    assert saved.model.spec.heads["red_head"] == {"type": "linear", "dim": 32, "out": 1}
    metrics = evaluate_run(tmp_path / "run", "test", show_progress=False)
    assert 0 <= metrics["red"]["accuracy"] <= 100 and metrics["red"]["positives"] > 0
    assert metrics["protocol"]["red"] == {"word": "red"}
    assert {"caption", "retrieval", "vqa"} <= set(metrics)  # the built-in tasks still score


def test_an_added_tasks_names_and_options_are_checked(red_task):
    with pytest.raises(ConfigError, match=r"train\.task_options\.red\.colour: unknown key"):
        load_run_config(None, ["train.task_options.red.colour=blue"])
    assert load_run_config(None, ["train.tasks.red=0"]).train.tasks == {"red": 0.0}


def test_without_the_task_its_name_is_unknown():
    with pytest.raises(ConfigError, match=r"train\.tasks\.red: unknown task"):
        load_run_config(None, ["train.tasks.red=1"])
