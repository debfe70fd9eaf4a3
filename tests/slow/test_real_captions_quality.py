"""The real captioned set (Tux Paint's stamps) with frozen DINOv2-S + MiniLM: a short run of
configs/real_pretrained.yaml learns captions that do not collapse and retrieval well above
chance. Needs the pretrained folders (TUWEN_PRETRAINED_DIR, default
~/.cache/tuwen-pretrained) and the built set (TUWEN_REAL_CAPTIONS, a folder that
tools/real_captions.py wrote); skipped with the reason when either is absent."""

import json
import os
from pathlib import Path

import pytest

from tuwen.apps.cli import main

ROOT = Path(os.environ.get("TUWEN_PRETRAINED_DIR", "~/.cache/tuwen-pretrained")).expanduser()
DATA = Path(os.environ.get("TUWEN_REAL_CAPTIONS", "data/tuxpaint"))
missing = [f for f in ("dinov2-small", "minilm") if not (ROOT / f / "config.json").is_file()]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(missing), reason=f"pretrained folders {missing} not in {ROOT}"),
    pytest.mark.skipif(not (DATA / "captions.json").is_file(),
                       reason=f"no real captions in {DATA} (tools/real_captions.py; set "
                              "TUWEN_REAL_CAPTIONS)")]


def test_frozen_pretrained_towers_learn_the_real_stamps(tmp_path):
    run = tmp_path / "run"
    common = [f"data.root={DATA}", f"model.text_encoder.name_or_path={ROOT / 'minilm'}"]
    args = ["train", "configs/real_pretrained.yaml", "--out", str(run),
            "--set", f"model.image_encoder.name_or_path={ROOT / 'dinov2-small'}",
            "--set", "train.max_steps=400"]
    for s in common:
        args += ["--set", s]
    assert main(args) == 0
    assert main(["eval", str(run), "--split", "test", "--set", "eval.decoding=greedy"]) == 0
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    caption, retrieval = metrics["caption"], metrics["retrieval"]
    # the collapse was one caption for every image; chance R@5 among 100 is 5 %
    assert caption["distinct_captions"] >= 0.5
    assert caption["cider"] >= 0.3
    assert retrieval["i2t_r5"] >= 30 and retrieval["t2i_r5"] >= 30
