"""End-to-end: the CLI on a tiny shapes dataset, as a user runs it."""

import json
import math

import pytest

from tiny import tiny_overrides
from tuwen.apps.cli import main


def sets(root, **train):
    return [arg for s in tiny_overrides(root, **train) for arg in ("--set", s)]


@pytest.fixture(scope="module")
def demo_run(tiny_shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    code = main(["demo", "--out", str(out), "--config", "configs/shapes.yaml",
                 "--data", str(tiny_shapes), "--n-train", "64", "--n-val", "8", "--n-test", "16",
                 "--n-test-novel", "8", *sets(tiny_shapes, max_steps=8)])
    assert code == 0
    return out


def finite_numbers(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from finite_numbers(value)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield tree


def test_demo_writes_the_whole_run_directory(demo_run, capsys):
    for rel in ("config.yaml", "metrics.jsonl", "model/config.json", "model/model.safetensors",
                "model/tokenizer.json", "model/answer_vocab.json", "checkpoints/step-8/state.json",
                "eval/test/metrics.json", "eval/test/predictions.jsonl",
                "eval/test_novel/metrics.json", "eval/test_novel/predictions.jsonl"):
        assert (demo_run / rel).is_file(), rel
    assert list((demo_run / "tensorboard").iterdir())
    metrics = json.loads((demo_run / "eval" / "test" / "metrics.json").read_text())
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider"):
        assert key in metrics["caption"]
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
        assert 0 <= metrics["retrieval"][key] <= 100
    assert {"accuracy", "by_answer_type", "by_question_type"} <= set(metrics["vqa"])
    assert "relative_position" in metrics["vqa"]["by_question_type"]
    assert metrics["n_images"] == 16 and metrics["n_questions"] > 16 and metrics["skipped"] == 0
    assert all(math.isfinite(x) for x in finite_numbers(metrics))
    grounding = metrics["grounding"]  # shapes data: scenes.json is there
    assert grounding["questions"] > 0 and 0 < grounding["uniform"] < 1
    # tiny_overrides: one fusion layer
    assert len(grounding["per_layer"]) == len(grounding["best_head_per_layer"]) == 1
    assert all(0 <= s <= 1 for s in grounding["per_layer"] + grounding["best_head_per_layer"])
    kinds = {json.loads(line)["task"]
             for line in (demo_run / "eval/test/predictions.jsonl").read_text().splitlines()}
    assert kinds == {"caption", "retrieval", "vqa"}


def test_eval_command_and_inference_commands(demo_run, tiny_shapes, capsys):
    assert main(["eval", str(demo_run), "--split", "val", "--tasks", "vqa"]) == 0
    metrics = json.loads((demo_run / "eval" / "val" / "metrics.json").read_text())
    assert "vqa" in metrics and "caption" not in metrics
    image = sorted((tiny_shapes / "images").glob("*.png"))[0]
    assert main(["caption", str(demo_run / "model"), str(image)]) == 0
    assert main(["ask", str(demo_run / "model"), str(image), "how many shapes are there?"]) == 0
    out = capsys.readouterr().out
    assert str(image) in out


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_stpes: 3\n")
    assert main(["train", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.max_stpes: unknown key" in err
    assert main(["train", "configs/shapes.yaml", "--out", str(tmp_path / "r"),
                 "--set", f"data.root={tmp_path / 'nowhere'}"]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing-run")]) == 2


def test_eval_skips_and_counts_an_unreadable_image(demo_run, tiny_shapes, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_shapes, data)
    test_ids = [r["question_id"] // 100 for r in json.loads(
        (data / "vqa_questions_test.json").read_text())["questions"]]
    (data / "images" / f"{test_ids[0]:06d}.png").write_bytes(b"\x89PNG broken")
    assert main(["eval", str(demo_run), "--split", "test", "--set", f"data.root={data}"]) == 0
    metrics = json.loads((demo_run / "eval" / "test" / "metrics.json").read_text())
    assert metrics["skipped"] == 1 and metrics["n_images"] == 15
    assert "000" in metrics["skipped_reasons"][0]
