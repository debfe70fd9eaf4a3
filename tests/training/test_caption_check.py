"""Caption collapse caught without validation: a cheap greedy check every N steps, its
verdict in the log, the progress bar, RUN/caption_checks.jsonl and the report; `tuwen eval`
flags a collapsed model."""

import json

from tiny import tiny_overrides
from tuwen.apps.cli import eval_collapse
from tuwen.config import load_config
from tuwen.training.loop import train
from tuwen.training.monitor import collapse_verdict


def test_the_verdict_names_the_distinct_share_and_the_most_common_caption():
    assert collapse_verdict(["a dog", "a cat", "a cow", "a dog"], 0.9, 0.2) is None
    said = collapse_verdict(["a."] * 15 + ["a dog"], 0.9, 0.2)
    assert said == "caption collapse: 12% of 16 captions distinct, the most common ('a.') for 94%"
    few = ["a dog", "a cat"] * 8  # no caption dominates, but only 2 of 16 are distinct
    assert collapse_verdict(few, 0.9, 0.2).startswith("caption collapse: 12% of 16")
    assert collapse_verdict(["one"], 0.9, 0.2) is None


def test_a_run_without_validation_checks_its_captions(tiny_shapes, tmp_path, capsys):
    sets = tiny_overrides(tiny_shapes, max_steps=4, caption_check_every=2,
                          caption_check_images=6)
    train(load_config(None, sets), tmp_path / "run", show_progress=False)
    checks = [json.loads(line) for line in (tmp_path / "run/caption_checks.jsonl").open()]
    assert [c["step"] for c in checks] == [2, 4]
    for c in checks:
        assert 0 < c["check_distinct_share"] <= 1 and 0 < c["check_most_common_share"] <= 1
        assert isinstance(c["check_example"], str)
    # four steps of a tiny model say one caption for every image: caught and said
    assert checks[-1]["check_collapsed"] == 1.0
    assert "warning: step 4: caption collapse:" in capsys.readouterr().out
    assert "check_" not in (tmp_path / "run/metrics.jsonl").read_text()


def test_validation_or_null_turns_the_check_off(tiny_shapes, tmp_path):
    base = tiny_overrides(tiny_shapes, max_steps=2)
    train(load_config(None, base + ["train.caption_check_every=null"]), tmp_path / "off",
          show_progress=False)
    train(load_config(None, base + ["train.eval_every=2"]), tmp_path / "val",
          show_progress=False)
    assert not (tmp_path / "off/caption_checks.jsonl").exists()
    assert not (tmp_path / "val/caption_checks.jsonl").exists()  # validation checks itself


def test_eval_flags_a_collapsed_model(tmp_path):
    records = [{"task": "caption", "image_id": i, "caption": "a."} for i in range(10)]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert eval_collapse(tmp_path).startswith("caption collapse: 10% of 10 captions distinct")
    records = [{"task": "caption", "image_id": i, "caption": f"a {i}"} for i in range(10)]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert eval_collapse(tmp_path) is None
    assert eval_collapse(tmp_path / "missing") is None
