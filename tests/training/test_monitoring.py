"""Schedules, periodic validation, the best checkpoint, caption collapse, W&B offline."""

import json
import math
import sys
import types

import pytest
import torch
from safetensors.torch import load_file

from tiny import tiny_overrides
from tuwen.config import load_config
from tuwen.errors import ConfigError
from tuwen.training.checkpoint import list_checkpoints, read_best
from tuwen.training.grad_norms import task_gradient_norms
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
    # the weights as a run resolves them from its data: every task named
    cfg = train_cfg("train.tasks={caption: 1, itc: 1, itm: 0.5, vqa: 1}",
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


def test_task_gradient_norms_equal_separate_backwards_and_leave_grads_alone():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    out = layer(x)
    losses = {"a": out.pow(2).mean(), "b": out[:, 0].sum(), "frozen": torch.tensor(1.0)}
    norms = task_gradient_norms(losses, {"a": 2.0, "b": 0.5}, list(layer.parameters()))
    assert layer.weight.grad is None  # measured without touching .grad
    for name, weight in (("a", 2.0), ("b", 0.5)):
        layer.zero_grad()
        (weight * losses[name]).backward(retain_graph=True)
        by_hand = torch.cat([p.grad.flatten() for p in layer.parameters()]).norm()
        assert norms[f"grad_norm_{name}"] == pytest.approx(float(by_hand), rel=1e-6)
    assert "grad_norm_frozen" not in norms  # a loss without a graph has no gradient


def test_per_task_gradient_norms_are_logged_and_do_not_change_training(tiny_shapes, tmp_path):
    runs = {}
    for every in (2, None):
        config = load_config(None, tiny_overrides(tiny_shapes, max_steps=4, save_every=100)
                             + [f"train.task_grad_norm_every={every or 'null'}"])
        train(config, tmp_path / str(every), show_progress=False)
        runs[every] = load_file(str(tmp_path / str(every) / "model" / "model.safetensors"))
        lines = [json.loads(x) for x in
                 (tmp_path / str(every) / "metrics.jsonl").read_text().splitlines()]
        logged = [sorted(k for k in x if k.startswith("grad_norm_")) for x in lines]
        if every is None:
            assert logged == [[], []]
            continue
        assert logged == [[f"grad_norm_{t}" for t in ("caption", "itc", "itm", "vqa")]] * 2
        for line in lines:
            assert all(math.isfinite(line[k]) and line[k] > 0 for k in logged[0])
    for name, tensor in runs[2].items():  # bitwise: measuring only reads the graph
        assert torch.equal(tensor, runs[None][name]), name
