"""Task weights left unset follow the labels the training data has; set ones are checked."""

import json

import pytest

from tiny import tiny_overrides
from tuwen.config import load_config
from tuwen.data.prepare import SplitData, read_split
from tuwen.data.records import ImageCaptions, VQAItem
from tuwen.errors import ConfigError, DataError
from tuwen.tasks.table import load_run_config, with_train_tasks
from tuwen.training.loop import train


def split(captions: bool, questions: bool) -> SplitData:
    data = SplitData("train")
    if captions:
        data.captions = [ImageCaptions(1, "a.png", "train", ("a red circle",))]
    if questions:
        data.questions = [VQAItem(7, 1, "a.png", "what colour?", ("red",) * 10, "red",
                                  "what color", "other")]
    return data


def resolved(weights: dict, data: SplitData) -> dict:
    """The weights > 0 a run trains with, given ``weights`` set in the config."""
    config = load_config(None, [f"train.tasks.{k}={v}" for k, v in weights.items()])
    tasks = with_train_tasks(config, data, lambda _: None).train.tasks
    return {k: v for k, v in tasks.items() if v > 0}


def test_unset_weights_follow_the_labels():
    assert resolved({}, split(True, False)) == {"caption": 1, "itc": 1, "itm": 1}
    assert resolved({}, split(False, True)) == {"vqa": 1}
    assert resolved({"itm": 0.5}, split(True, True)) == {"caption": 1, "itc": 1, "itm": 0.5,
                                                         "vqa": 1}


def test_a_weight_set_without_its_labels_is_an_error():
    with pytest.raises(DataError, match="no vqa labels in this split, but train.tasks weighs vqa"):
        resolved({"vqa": 1}, split(True, False))
    with pytest.raises(DataError, match="no caption labels in this split"):
        resolved({"itc": 2}, split(False, True))
    assert resolved({"vqa": 0}, split(True, False)) == {"caption": 1, "itc": 1, "itm": 1}


def test_the_log_names_the_tasks_that_run_and_why_one_does_not():
    config = load_config(None)
    lines = []
    resolved = with_train_tasks(config, split(True, False), lines.append)
    assert lines == ["training tasks: caption (weight 1), itc (weight 1), itm (weight 1); "
                     "not vqa: split 'train' has no vqa labels"]
    assert resolved.train.tasks == {"caption": 1, "itc": 1, "itm": 1, "vqa": 0, "chat": 0}
    assert config.train.tasks == {}  # the caller's config is left as it was


def caption_only_jsonl(shapes, folder):
    """The shapes captions as a JSON-lines file: a format that may hold questions too."""
    karpathy = json.loads((shapes / "captions.json").read_text())
    rows = [{"image": f"{im['filepath']}/{im['filename']}", "captions": [
        s["raw"] for s in im["sentences"]], "split": im["split"]} for im in karpathy["images"]]
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [f"data.sources=[{{format: jsonl, path: captions.jsonl, image_root: '{shapes}'}}]",
            f"data.root={folder}"]


def test_caption_only_data_trains_without_naming_vqa(tiny_shapes, tmp_path, capsys):
    sets = tiny_overrides(tiny_shapes, max_steps=2, log_every=1, save_every=2)
    config = load_config(None, sets + caption_only_jsonl(tiny_shapes, tmp_path))
    assert not read_split(config.data, "train").questions
    train(config, tmp_path / "run", show_progress=False)
    assert "not vqa: split 'train' has no vqa labels" in capsys.readouterr().out
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"loss_caption", "loss_itc", "loss_itm"} <= set(logged)
    assert "loss_vqa" not in logged


def test_vqa_weighted_without_questions_fails_clearly(tiny_shapes, tmp_path):
    sets = tiny_overrides(tiny_shapes, max_steps=2) + caption_only_jsonl(tiny_shapes, tmp_path)
    config = load_config(None, [*sets, "train.tasks.vqa=1"])
    with pytest.raises(DataError, match="no vqa labels in this split, but train.tasks weighs vqa"):
        train(config, tmp_path / "run", show_progress=False)
    # a source format that cannot hold questions: the error comes at load
    with pytest.raises(ConfigError, match=r"train\.tasks\.vqa=1\.0 needs a data source"):
        load_run_config(None, ["data.sources=[{format: karpathy}]", "train.tasks.vqa=1"])
