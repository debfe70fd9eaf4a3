"""``tuwen ablate``: a 2-value x 2-seed grid on the tiny shapes data writes its report."""

import csv
import math

import pytest

from tiny import tiny_overrides
from tuwen.apps.cli import main
from tuwen.apps.space import BaseConfig
from tuwen.errors import ConfigError

FAST = ["train.max_steps=2", "eval.tasks=[caption,retrieval,vqa]", "eval.decoding=greedy",
        "eval.max_new_tokens=6"]


def test_two_values_two_seeds_give_two_rows(tiny_shapes, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "")  # python PTB tokenisation, no METEOR JVM per run
    out = tmp_path / "ablation"
    args = ["ablate", "configs/shapes.yaml", "--axis", "model.fusion.type=concat,weighted_sum",
            "--seeds", "2", "--out", str(out), "--resamples", "200"]
    for s in tiny_overrides(tiny_shapes) + FAST:
        args += ["--set", s]
    assert main(args) == 0
    rows = list(csv.DictReader((out / "ablation.csv").open()))
    assert [r["model.fusion.type"] for r in rows] == ["concat", "weighted_sum"]
    assert all(r["seeds"] == "2" for r in rows)
    for row in rows:
        for key in ("caption.cider_mean", "retrieval.t2i_r1_mean", "vqa.accuracy_mean",
                    "images_per_sec_mean", "params_mean"):
            assert math.isfinite(float(row[key])), key
    assert float(rows[0]["params_mean"]) != float(rows[1]["params_mean"])
    boot = list(csv.DictReader((out / "bootstrap.csv").open()))
    assert {b["metric"] for b in boot} >= {"caption.cider", "retrieval.t2i_r1", "vqa.accuracy"}
    assert all(float(b["low"]) <= float(b["diff"]) <= float(b["high"]) for b in boot)
    text = (out / "ablation.md").read_text()
    assert "| concat | 2 |" in text and "model.fusion.layers (weighted_sum)" in text
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((out / "runs").glob("*/seed-*/model/model.safetensors"))) == 4

    # a second call reuses the four evaluated runs instead of training again
    assert main(args) == 0
    assert capsys.readouterr().out.count("done before, reusing") == 4


@pytest.mark.parametrize("axis, message", [
    ("model.fusion.typo=1,2", "model.fusion.typo: no such config key"),
    ("train.batch_size=8,big", "train.batch_size"),
    ("model.fusion.type=", "empty list of values"),
    ("train.seed=1,2", "seeds are set by --seeds"),
])
def test_bad_axis_is_one_error_before_any_run(tiny_shapes, tmp_path, axis, message):
    base = BaseConfig("configs/shapes.yaml", tiny_overrides(tiny_shapes))
    from tuwen.apps.ablate import plan

    with pytest.raises(ConfigError, match=message):
        plan(base, [axis], 2)
    assert not (tmp_path / "runs").exists()


def test_an_axis_can_switch_a_typed_section_inside_another():
    base = BaseConfig("configs/shapes_llm.yaml", [])
    config, dropped = base.with_values({"model.decoder.reduce.type": "avg_pool"}, "--axis")
    assert config.model.decoder.reduce.type == "avg_pool"
    assert dropped == ["model.decoder.reduce.factor"]
    pooled = BaseConfig("configs/shapes_llm.yaml", ["model.decoder.reduce={type: avg_pool}"])
    pooled.check("model.decoder.reduce.tokens", [16, 36], "--axis")
    with pytest.raises(ConfigError, match=r"--axis model\.decoder\.reduce\.tokens=15: .*not a "
                                          r"square number"):
        pooled.check("model.decoder.reduce.tokens", [15], "--axis")
