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


def _overlay(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_named_variants_overlay_several_keys_and_switch_types(tmp_path):
    from tuwen.apps.ablate import plan

    small = _overlay(tmp_path / "small.yaml", "model:\n  decoder: {type: transformer, layers: 3}\n")
    llm = _overlay(tmp_path / "llm.yaml", (
        "model:\n  decoder:\n    name_or_path: some/lm\n    type: hf_causal_lm\n"
        "    projector: linear\n  vqa: {mode: generate}\ntrain: {batch_size: 4}\n"))
    base = BaseConfig("configs/shapes.yaml", [])
    variants = plan(base, ["train.lr=0.001,0.002"], 1, [f"small={small}", f"llm={llm}"])
    assert [v.label for v in variants] == ["variant=small, train.lr=0.001",
                                           "variant=small, train.lr=0.002",
                                           "variant=llm, train.lr=0.001",
                                           "variant=llm, train.lr=0.002"]
    small_cfg, llm_cfg = variants[0].config, variants[3].config
    assert small_cfg.model.decoder.type == "transformer" and small_cfg.model.decoder.layers == 3
    assert llm_cfg.model.decoder.type == "hf_causal_lm"
    assert llm_cfg.model.decoder.name_or_path == "some/lm" and llm_cfg.model.vqa.mode == "generate"
    assert (llm_cfg.train.batch_size, llm_cfg.train.lr) == (4, 0.002)
    # the old type's keys that the LM decoder lacks were dropped, and said so
    assert "model.decoder.layers" in variants[2].dropped
    only = plan(base, [], 1, [f"small={small}", f"llm={llm}"])
    assert [v.label for v in only] == ["small", "llm"]
    # --set wins over an overlay's same key (a local folder for the overlay's hub name)
    local = BaseConfig("configs/shapes.yaml", ["model.decoder.name_or_path=/models/lm"])
    with pytest.raises(ConfigError, match="name_or_path"):  # not a key of the base decoder
        local.with_values({}, "--set")
    with_folder = BaseConfig("configs/shapes_llm.yaml", ["model.decoder.name_or_path=/models/lm"])
    small_v, llm_v = plan(with_folder, [], 1, [f"small={small}", f"llm={llm}"])
    assert llm_v.config.model.decoder.name_or_path == "/models/lm"
    assert small_v.config.model.decoder.type == "transformer"
    assert "model.decoder.name_or_path" in small_v.dropped


@pytest.mark.parametrize("overlays, axes, message", [
    (["a=A"], [], "two --variant"),
    (["a=A", "a=A"], [], "a name is given twice"),
    (["a=missing.yaml", "b=A"], [], "missing.yaml not found"),
    (["a", "b=A"], [], "expected NAME=FILE.yaml"),
    (["a=A", "b=B"], ["train.lr=0.1,0.2"], "sets train.lr, which an --axis varies"),
    (["a=A", "b=TYPO"], [], r"--variant b .*model.fusion.typo: unknown key"),
])
def test_bad_variants_are_one_error_before_any_run(tmp_path, overlays, axes, message):
    from tuwen.apps.ablate import plan

    files = {"A": _overlay(tmp_path / "a.yaml", "train: {lr: 0.01}\n"),
             "B": _overlay(tmp_path / "b.yaml", "train: {warmup_steps: 3}\n"),
             "TYPO": _overlay(tmp_path / "t.yaml", "model: {fusion: {typo: 1}}\n")}
    overlays = [o.replace("=A", f"={files['A']}").replace("=B", f"={files['B']}")
                .replace("=TYPO", f"={files['TYPO']}") for o in overlays]
    with pytest.raises(ConfigError, match=message):
        plan(BaseConfig("configs/shapes.yaml", []), axes, 1, overlays)


@pytest.mark.parametrize("config", ["configs/shapes_llm.yaml", "configs/real_pretrained.yaml"])
def test_the_shipped_decoder_overlays_apply_to_both_comparison_configs(config):
    from tuwen.apps.ablate import plan

    small, llm = plan(BaseConfig(config, []), [], 1, [
        "small=configs/decoders/small.yaml", "smollm2=configs/decoders/smollm2.yaml"])
    assert small.config.model.decoder.type == "transformer"
    assert small.config.model.vqa.mode == "classify"
    assert llm.config.model.decoder.type == "hf_causal_lm"
    assert llm.config.model.decoder.lora is not None and llm.config.train.batch_size == 8
