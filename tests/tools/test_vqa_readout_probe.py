"""tools/vqa_readout_probe.py: the frozen-token readout runs end to end and learns."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hf_tiny import save_image_model

TOOL = Path(__file__).parents[2] / "tools" / "vqa_readout_probe.py"
spec = importlib.util.spec_from_file_location("vqa_readout_probe", TOOL)
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220),
           "yellow": (230, 220, 20)}


def write_set(root: Path, images: int = 48, test: int = 8) -> None:
    """A square of one colour in one quadrant; two question types."""
    (root / "images").mkdir(parents=True)
    rows = {"train": ([], []), "test": ([], [])}
    for i in range(images):
        colour, corner = list(COLOURS)[i % 4], (i // 4) % 4
        pixels = np.zeros((32, 32, 3), dtype=np.uint8)
        y, x = 16 * (corner // 2), 16 * (corner % 2)
        pixels[y:y + 16, x:x + 16] = COLOURS[colour]
        Image.fromarray(pixels).save(root / "images" / f"{i:06d}.png")
        split = "test" if i >= images - test else "train"
        for k, (question, answer, kind) in enumerate([
                ("what colour is the square?", colour, "colour"),
                ("is the square at the top?", "yes" if corner < 2 else "no", "exists")]):
            qid = 10 * i + k
            rows[split][0].append({"image_id": i, "question": question, "question_id": qid})
            rows[split][1].append({"image_id": i, "question_id": qid, "question_type": kind,
                                   "multiple_choice_answer": answer})
    for split, (asked, notes) in rows.items():
        (root / f"vqa_questions_{split}.json").write_text(json.dumps({"questions": asked}))
        (root / f"vqa_annotations_{split}.json").write_text(json.dumps({"annotations": notes}))


def test_the_table_is_printed_per_size_layer_and_question_type(tmp_path, monkeypatch, capsys):
    write_set(tmp_path / "set")
    vit = save_image_model("vit", tmp_path / "vit")
    monkeypatch.setattr(sys, "argv", [
        "vqa_readout_probe.py", str(tmp_path / "set"), "--image-model", str(vit),
        "--sizes", "32", "--layers", "-1", "1", "--steps", "30", "--batch", "16"])
    probe.main()
    out = capsys.readouterr().out
    assert "80 training and 16 test questions on 48 images" in out
    assert "| px | layer | tokens | all | colour | exists |" in out
    assert "| 32 | -1 | 16 |" in out and "| 32 | 1 | 16 |" in out  # 4x4 patches, CLS left out


def test_an_attribute_the_tokens_carry_is_read_and_unseen_answers_count_as_wrong():
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(4, 8, generator=g)  # one token code per colour
    tokens = torch.randn(40, 4, 8, generator=g) * 0.1
    train, test = [], []
    for i in range(40):
        tokens[i, i % 4] += codes[i % 4] * 3  # the object's token, at its own place
        row = {"image_id": i, "words": ["what", "colour"], "answer": f"c{i % 4}",
               "type": "colour"}
        (test if i >= 32 else train).append(row)
    test.append({"image_id": 0, "words": ["what", "colour"], "answer": "never", "type": "colour"})
    scores = probe.probe(tokens, train, test, {i: i for i in range(40)}, steps=300, batch=16,
                         seed=0)
    assert scores["colour"] == scores["all"] == 100 * 8 / 9  # all 8 right, the unseen one not


def test_a_question_of_only_unseen_words_gets_an_answer_not_nan():
    net = probe.Readout(width=8, patches=4, words=5, answers=3)
    words = torch.full((1, 3), 5)  # every position padding: no word seen in training
    assert torch.isfinite(net(torch.randn(1, 4, 8), words)).all()
