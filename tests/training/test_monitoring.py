"""Schedules, periodic validation, the best checkpoint, caption collapse, W&B offline."""

import json
import math
import sys
import types

import pytest

from tiny import tiny_overrides
from tuwen.config import load_config
from tuwen.errors import ConfigError
from tuwen.training.checkpoint import list_checkpoints, read_best
from tuwen.training.loop import train
from tuwen.training.monitor import caption_diversity, collapse_warning
from tuwen.training.optim import lr_factor, task_weights
from tuwen.training.validation import CollapseWarning


def train_cfg(*sets):
    return load_config(None, ["train.warmup_steps=4", "train.max_steps=104",
                              "train.min_lr_ratio=0.1", *sets]).train


@pytest.mark.parametrize("schedule, halfway", [("cosine", 0.55), ("linear", 0.55),
                                               ("constant", 1.0)])
def test_lr_schedules(schedule, halfway):
    cfg = train_cfg(f"train.schedule={schedule}")
    assert lr_factor(0, 0.0, cfg) == pytest.approx(0.25)  # warmup: (step+1)/4
    assert lr_factor(3, 0.0, cfg) == pytest.approx(1.0)
    assert lr_factor(52, 0.5, cfg) == pytest.approx(halfway)  # 0.1 + 0.9 * 0.5
    assert lr_factor(104, 1.0, cfg) == pytest.approx(0.1 if schedule != "constant" else 1.0)
    if schedule == "cosine":
        quarter = 0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2
        assert lr_factor(26, 0.25, cfg) == pytest.approx(quarter)


def test_task_weights_follow_their_schedule():
    cfg = train_cfg("train.tasks.itm=0.5",
                    "train.task_schedule=[{step: 10, itm: 0.0, vqa: 2.0}, {step: 20, itm: 1.0}]")
    assert task_weights(0, cfg) == {"caption": 1.0, "itc": 1.0, "vqa": 2.0}  # itm 0: left out
    assert task_weights(15, cfg)["itm"] == pytest.approx(0.5)
    assert task_weights(99, cfg) == {"caption": 1.0, "itc": 1.0, "itm": 1.0, "vqa": 2.0}
    with pytest.raises(ConfigError, match="steps must increase"):
        load_config(None, ["train.task_schedule=[{step: 5, itm: 1}, {step: 5, itm: 0}]"])


def test_caption_diversity_by_hand():
    stats = caption_diversity(["a red circle", "a red circle", "a blue square", "a red circle"])
    assert stats["identical_share"] == 0.75
    assert stats["distinct_1"] == pytest.approx(5 / 12)  # a red circle blue square / 12 words
    assert stats["distinct_2"] == pytest.approx(4 / 8)   # a-red red-circle a-blue blue-square
    assert collapse_warning(stats, 4, 0.9) is None
    assert "one caption for 75%" in collapse_warning(stats, 4, 0.7)
    same = caption_diversity(["a red circle"] * 3)
    assert "same caption for all 3 images" in collapse_warning(same, 3, 0.9)


def test_validation_logs_keeps_the_best_and_warns_on_collapse(tiny_shapes, tmp_path):
    scores = iter([50.0, 40.0])  # retrieval gets worse: the first validation is best

    def evaluate(model, step):
        return {"retrieval": {"t2i_r1": next(scores)}, "n_images": 8}

    config = load_config(None, tiny_overrides(
        tiny_shapes, max_steps=4, eval_every=2, save_every=100, keep_last=1,
        best_metric="val_retrieval.t2i_r1") + ["train.task_schedule=[{step: 2, itm: 0}, "
                                               "{step: 3, itm: 1}]"])
    with pytest.warns(CollapseWarning, match="same caption"):  # an untrained captioner
        train(config, tmp_path / "run", show_progress=False, evaluate=evaluate)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [x for x in lines if "val_loss" in x]
    assert [x["step"] for x in val] == [2, 4]
    for key in ("val_loss_caption", "val_loss_vqa", "val_caption_identical_share",
                "val_caption_distinct_1", "val_caption_distinct_2", "val_retrieval.t2i_r1"):
        assert key in val[0], key
    assert "val_loss_itm" not in val[0] and "val_loss_itm" in val[1]  # scheduled from 0
    weights = [x["weight_itm"] for x in lines if "weight_itm" in x]
    assert weights == [0.5]  # logged at step 4: mean of 0 (step 2) and 1 (step 3)
    assert read_best(tmp_path / "run" / "checkpoints") == {
        "step": 2, "metric": "val_retrieval.t2i_r1", "value": 50.0}
    kept = [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert kept == ["step-2", "step-4"]  # the best and the last (keep_last=1)


def test_wandb_offline(tiny_shapes, tmp_path, monkeypatch):
    config = load_config(None, tiny_overrides(tiny_shapes, max_steps=2, wandb="true"))
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ConfigError, match="needs the wandb package"):
        train(config, tmp_path / "a", show_progress=False)

    calls = {}

    class Run:
        def log(self, values, step):
            calls.setdefault("log", []).append(step)

        def finish(self):
            calls["finish"] = True

    fake = types.SimpleNamespace(init=lambda **kw: calls.update(init=kw) or Run())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    train(config, tmp_path / "b", show_progress=False)
    assert calls["init"]["mode"] == "offline" and calls["init"]["dir"] == str(tmp_path / "b")
    assert calls["log"] == [2] and calls["finish"]
