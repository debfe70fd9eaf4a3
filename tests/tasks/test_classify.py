"""Zero-shot classification: the image-folder source, template ensembling, the metrics, the
report's confusion matrix, Pipeline.classify and ``tuwen classify``."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tiny import tiny_overrides
from tuwen.apps.cli import main
from tuwen.apps.pipeline import Pipeline
from tuwen.data.readers_folder import read_image_folder
from tuwen.data.shapes import write_class_folders
from tuwen.errors import DataError, TuwenError
from tuwen.evaluation.evaluate import evaluate_run
from tuwen.tasks import retrieval
from tuwen.tasks.classify import Confusion, class_embeddings
from tuwen.tasks.table import load_run_config
from tuwen.training.loop import train


def test_an_image_folder_reads_one_class_per_folder(tmp_path):
    for name in ("red_circle", "blue square"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "a.png")
    (tmp_path / "red_circle" / "notes.txt").write_text("not an image")
    read = read_image_folder(tmp_path, "test")
    assert [(r.label, r.image_id) for r in read.records] == [
        ("blue square", "blue square/a"), ("red circle", "red_circle/a")]
    assert len(read.skipped) == 1 and "notes.txt: not an image file" in read.skipped[0]
    with pytest.raises(DataError, match="image folder not found"):
        read_image_folder(tmp_path / "nowhere", "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        read_image_folder(tmp_path / "empty", "test")


def test_confusion_counts_by_hand():
    # three images of classes 0, 1, 1; rankings best first
    c = Confusion(["a", "b", "c"], np.array([0, 1, 1]),
                  np.array([[0, 1, 2], [2, 1, 0], [1, 0, 2]]))
    assert c.top(1) == pytest.approx(200 / 3) and c.top(2) == 100.0
    assert c.matrix().tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    assert c.per_class() == {"a": 100.0, "b": 50.0}


def test_template_ensembling_is_the_normalised_mean(tiny_model):
    from tuwen.data.tokenizer import train_tokenizer

    tok = train_tokenizer(["a photo of a red circle", "a blue square"], vocab_size=50)
    names, templates = ["red circle", "blue square"], ["a photo of a {}.", "a {}."]
    got = class_embeddings(tiny_model, tok, names, templates, 16)
    for row, name in enumerate(names):
        ids, mask = retrieval.tokenize_texts(tiny_model, tok, [t.format(name) for t in templates],
                                             16)
        each, _ = retrieval.embed_texts(tiny_model, ids, mask)
        torch.testing.assert_close(got[row], torch.nn.functional.normalize(each.mean(0), dim=0))


@pytest.fixture(scope="module")
def classified_run(tiny_shapes, tmp_path_factory):
    """A tiny shapes model trained a few steps, and the one-object test images as classes."""
    root = tmp_path_factory.mktemp("classify")
    counts = write_class_folders(tiny_shapes, root / "classes" / "test", "test")
    config = load_run_config(None, tiny_overrides(tiny_shapes, max_steps=3))
    train(config, root / "run", show_progress=False)
    return root, counts


def test_eval_scores_class_folders_zero_shot_and_draws_the_confusion(classified_run):
    root, counts = classified_run
    sets = [f"data.sources=[{{format: imagefolder, path: '{root}/classes/{{split}}'}}]",
            "train.task_options.classify.labels=[green triangle]"]  # a class with no images
    metrics = evaluate_run(root / "run", "test", overrides=sets, show_progress=False)
    found = metrics["classify"]
    names = sorted({n.replace("_", " ") for n in counts} | {"green triangle"})
    assert found["n_classes"] == len(names) and found["confusion"]["labels"] == names
    matrix = np.array(found["confusion"]["matrix"])
    assert matrix.sum() == sum(counts.values())
    assert 0 <= found["top1"] <= found["top5"] <= 100
    assert "caption" not in metrics  # no captions in these sources
    assert metrics["protocol"]["classify"]["chance_top1"] == pytest.approx(100 / len(names))
    lines = [json.loads(x) for x in (root / "run/eval/test/predictions.jsonl").read_text()
             .splitlines()]
    assert len(lines) == sum(counts.values()) and all(x["task"] == "classify" for x in lines)
    assert sum(x["right"] for x in lines) == np.trace(matrix)
    page = (root / "run/eval/test/report.html").read_text()
    assert "Zero-shot classification" in page and 'alt="confusion matrix"' in page


def test_pipeline_and_cli_classify(classified_run, capsys, tmp_path):
    root, counts = classified_run
    pipe = Pipeline.from_pretrained(root / "run" / "model", device="cpu")
    images = sorted((root / "classes" / "test").glob("*/*.png"))[:3]
    labels = ["red circle", "blue square", "green triangle"]
    ranked = pipe.classify(images, labels, top_k=2)
    assert len(ranked) == 3 and all(len(r) == 2 for r in ranked)
    assert all(r[0][1] >= r[1][1] and {n for n, _ in r} <= set(labels) for r in ranked)
    full = pipe.classify(images[:1], labels, top_k=3)[0]
    assert sum(p for _, p in full) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(TuwenError, match="distinct, non-empty labels"):
        pipe.classify(images, ["a", "a"])
    with pytest.raises(TuwenError, match=r"templates: .*exactly one '\{\}'"):
        pipe.classify(images, labels, templates=["no slot"])
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    assert main(["classify", str(root / "run" / "model"), str(images[0]),
                 "--labels", str(tmp_path / "labels.txt"), "--top", "2"]) == 0
    out = capsys.readouterr().out.strip().split("\t")
    assert out[0] == str(images[0]) and out[1] in labels
    assert main(["classify", str(root / "run" / "model"), str(images[0]),
                 "--labels", str(tmp_path / "missing.txt")]) == 2
    assert "--labels" in capsys.readouterr().err
