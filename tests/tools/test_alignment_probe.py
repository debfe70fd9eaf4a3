"""tools/alignment_probe.py: the frozen-feature alignment bound runs end to end and learns."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hf_tiny import save_bert, save_image_model

TOOL = Path(__file__).parents[2] / "tools" / "alignment_probe.py"
spec = importlib.util.spec_from_file_location("alignment_probe", TOOL)
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220),
           "yellow": (230, 220, 20)}


def test_aligned_features_are_retrieved_and_the_table_is_printed(tmp_path, monkeypatch, capsys):
    images = []
    for i in range(24):
        name = list(COLOURS)[i % 4]
        file = f"{i}.png"
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), COLOURS[name], dtype=np.uint8)).save(
            tmp_path / "images" / file)
        images.append({"filename": file, "split": "test" if i >= 20 else "train",
                       "sentences": [{"raw": f"a {name} circle"}]})
    (tmp_path / "captions.json").write_text(json.dumps({"images": images}))
    vit = save_image_model("vit", tmp_path / "vit")
    bert = save_bert(tmp_path / "bert")
    monkeypatch.setattr(sys, "argv", [
        "alignment_probe.py", str(tmp_path / "captions.json"), "--image-model", str(vit),
        "--text-model", str(bert), "--sizes", "32", "--steps", "60", "--seeds", "1",
        "--batch", "8"])
    probe.main()
    out = capsys.readouterr().out
    assert "20 training and 4 test pairs" in out
    assert "| cls | 32 |" in out and "| cls+mean | 32 |" in out


def test_two_separable_sets_align_perfectly():
    g = torch.Generator().manual_seed(0)
    codes = torch.eye(4)[torch.arange(40) % 4]
    images = codes @ torch.randn(4, 16, generator=g)
    texts = codes @ torch.randn(4, 8, generator=g)
    i2t, t2i = probe.align(images, texts, list(range(36)), [36, 37, 38, 39], steps=200,
                           batch=16, seed=0)
    assert (i2t, t2i) == (100.0, 100.0)
