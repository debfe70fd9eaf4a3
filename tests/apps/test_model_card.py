"""The model card a training writes and tuwen eval updates, and tuwen reproduce."""

import json
import shutil

import pytest
import yaml

from tiny import tiny_overrides
from tuwen.apps.cli import main
from tuwen.apps.reproduce import DataChanged, reproduce
from tuwen.evaluation.model_card import CARD_FILE, read_card


def front_matter(model_dir) -> dict:
    text = (model_dir / CARD_FILE).read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("\n---\n", 1)[0][4:])


def test_training_writes_a_hugging_face_model_card(trained_run):
    meta = front_matter(trained_run / "model")
    assert meta["library_name"] == "tuwen" and "tuwen" in meta["tags"]
    assert meta["datasets"] == ["captions", "vqa"]
    tuwen = meta["tuwen"]
    assert tuwen["version"] and "commit" in tuwen and "dirty" in tuwen
    assert tuwen["config"]["train"]["max_steps"] == 8
    assert tuwen["training"]["steps"] == 8 and tuwen["training"]["wall_time_s"] > 0
    assert tuwen["hardware"]["cpu_count"] >= 1 and "torch" in tuwen["hardware"]
    captions, vqa = tuwen["data"]
    assert list(captions["files"]) == ["captions.json"] and captions["images"]["count"] > 0
    assert "vqa_questions_test.json" in vqa["files"]
    assert "# run" in (trained_run / "model" / CARD_FILE).read_text()


def test_eval_adds_its_metrics_with_their_protocol(trained_run, predictions):
    meta = front_matter(trained_run / "model")   # `predictions` ran tuwen eval on test
    metrics = json.loads((trained_run / "eval" / "test" / "metrics.json").read_text())
    assert meta["tuwen"]["metrics"]["test"]["vqa.accuracy"] == metrics["vqa"]["accuracy"]
    results = {r["task"]["type"]: r for r in meta["model-index"][0]["results"]}
    assert {"image-to-text", "image-text-retrieval", "visual-question-answering"} <= set(results)
    vqa = results["visual-question-answering"]
    assert vqa["dataset"]["split"] == "test"
    assert "VQAv2" in vqa["dataset"]["args"]["protocol"]["formula"]
    assert {"type": "accuracy", "value": metrics["vqa"]["accuracy"],
            "name": "VQA accuracy %"} in vqa["metrics"]


@pytest.fixture(scope="module")
def card_run(tiny_shapes, tmp_path_factory):
    """A 4-step run evaluated (retrieval and VQA) on the test split."""
    run = tmp_path_factory.mktemp("card") / "run"
    sets = tiny_overrides(tiny_shapes, max_steps=4, save_every=4)
    assert main(["train", "configs/shapes.yaml", "--out", str(run),
                 *[arg for s in sets for arg in ("--set", s)]]) == 0
    assert main(["eval", str(run), "--tasks", "retrieval,vqa"]) == 0
    return run


def test_reproduce_retrains_to_bitwise_equal_weights_and_equal_metrics(card_run, tmp_path,
                                                                       capsys):
    capsys.readouterr()
    assert main(["reproduce", str(card_run / "model"), "--out", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert "weights (model.safetensors): bitwise equal" in out
    assert "vqa.accuracy" in out and "retrieval.t2i_r1" in out
    card = read_card(card_run / "model")["tuwen"]["metrics"]["test"]
    again = read_card(tmp_path / "again" / "model")["tuwen"]["metrics"]["test"]
    assert again == card


def test_reproduce_refuses_when_a_data_file_changed(card_run, tiny_shapes, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_shapes, data)
    captions = json.loads((data / "captions.json").read_text())
    captions["images"][0]["sentences"][0]["raw"] = "a different caption"
    (data / "captions.json").write_text(json.dumps(captions))
    (data / "images" / captions["images"][1]["filename"]).unlink()
    with pytest.raises(DataChanged, match=r"captions: captions.json differ.*image list "
                                          r"differs \(\d+ images on the card, \d+ now\)"):
        reproduce(card_run / "model", tmp_path / "again", data_root=data, show_progress=False)
    assert not (tmp_path / "again").exists()   # refused before training
    assert main(["reproduce", str(card_run / "model"), "--out", str(tmp_path / "again"),
                 "--data", str(data)]) == 2
    assert "not the data the card was trained on" in capsys.readouterr().err


def test_reproduce_refuses_a_folder_without_a_card(tmp_path):
    (tmp_path / "model").mkdir()
    assert main(["reproduce", str(tmp_path / "model"), "--out", str(tmp_path / "x")]) == 2
