"""``--set`` on a typed section's ``type`` switches it, and errors inside a nested typed
section name that section's type (tuwen.config.paths)."""

import warnings

import pytest
import yaml

from tuwen.apps.cli import main
from tuwen.config import load_config
from tuwen.config.paths import known_path, set_key, split_loc
from tuwen.errors import ConfigError, TuwenWarning

SHAPES, LLM = "configs/shapes.yaml", "configs/shapes_llm.yaml"


def raw(path):
    with open(path) as f:
        return yaml.safe_load(f)


def test_switching_fusion_keeps_shared_keys_and_drops_only_the_old_types_own():
    with pytest.warns(TuwenWarning) as notes:
        fusion = load_config(SHAPES, ["model.fusion.type=concat"]).model.fusion
    assert (fusion.type, fusion.layers, fusion.heads) == ("concat", 2, 4)
    assert [str(n.message) for n in notes] == [
        "--set model.fusion.type=concat: dropped model.fusion.window (not a key of concat)"]

    tree = raw(SHAPES)
    dropped = set_key(tree, ["model", "fusion", "type"], "weighted_sum", "--set")
    assert dropped == ["model.fusion.layers", "model.fusion.heads", "model.fusion.window"]
    assert tree["model"]["fusion"] == {"type": "weighted_sum"}
    assert tree["model"]["text_encoder"]["window"] == 1  # other sections untouched


def test_switching_a_typed_section_inside_another():
    tree = raw(LLM)
    assert tree["model"]["decoder"]["reduce"] == {"type": "pixel_shuffle", "factor": 2}
    with pytest.warns(TuwenWarning, match=r"dropped model\.decoder\.reduce\.factor \(not a key "
                                          r"of none\)"):
        decoder = load_config(LLM, ["model.decoder.reduce.type=none"]).model.decoder
    assert decoder.reduce.type == "none" and decoder.lora.r == 8
    with pytest.warns(TuwenWarning, match="not a key of avg_pool"):
        reduce = load_config(LLM, ["model.decoder.reduce.type=avg_pool",
                                   "model.decoder.reduce.tokens=16"]).model.decoder.reduce
    assert (reduce.type, reduce.tokens) == ("avg_pool", 16)


def test_the_default_type_counts_as_the_old_one():
    with pytest.warns(TuwenWarning, match=r"dropped model\.fusion\.layers, model\.fusion\.window "
                                          r"\(not keys of weighted_sum\)"):
        fusion = load_config(None, ["model.fusion={layers: 3, window: 1}",
                                    "model.fusion.type=weighted_sum"]).model.fusion
    assert fusion.type == "weighted_sum"


def test_no_switch_no_note():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config(SHAPES, ["model.fusion.type=cross_attention"]).model.fusion.window == 1
        assert load_config(None, ["model.fusion.type=concat"]).model.fusion.type == "concat"


def test_a_typo_still_errors_naming_the_key():
    with pytest.raises(ConfigError, match=r"model\.fusion\.windw: unknown key for type 'concat'"), \
            pytest.warns(TuwenWarning, match=r"dropped model\.fusion\.window \("):
        load_config(SHAPES, ["model.fusion.windw=1", "model.fusion.type=concat"])
    # a key of another type than the old one is not the switch's to drop either
    with pytest.raises(ConfigError, match=r"model\.fusion\.gate: unknown key for type 'concat'"):
        load_config(None, ["model.fusion={type: concat, gate: scalar}", "model.fusion.type=concat"])
    # an unknown type keeps every key and is the one error
    with pytest.raises(ConfigError, match=r"invalid config: model\.fusion\.type: expected 'concat' "
                                          r"or 'weighted_sum' or 'cross_attention' \(got 'sum'\)$"):
        load_config(SHAPES, ["model.fusion.type=sum"])


def test_a_foreign_key_in_a_nested_typed_section_names_that_sections_type():
    with pytest.raises(ConfigError) as err:
        load_config(LLM, ["model.decoder.reduce={type: none, factor: 2}"])
    assert str(err.value).endswith(
        "invalid config: model.decoder.reduce.factor: unknown key for type 'none'")
    with pytest.raises(ConfigError) as err:  # a plain section inside a typed one: no type
        load_config(LLM, ["model.decoder.lora.rank=4"])
    assert str(err.value).endswith("invalid config: model.decoder.lora.rank: unknown key")
    with pytest.raises(ConfigError, match=r"data\.sources\.1\.shards: unknown key for format "
                                          r"'vqav2'"):
        load_config(SHAPES, ["data.sources=[{format: karpathy}, {format: vqav2, shards: x}]"])


def test_error_paths_drop_pydantic_tags_by_position_not_by_name():
    path, tags = split_loc(("model", "decoder", "hf_causal_lm", "reduce", "none", "factor"))
    assert path == ["model", "decoder", "reduce", "factor"]
    assert tags == {1: ("type", "hf_causal_lm"), 2: ("type", "none")}
    assert split_loc(("data", "sources", 0, "karpathy", "path"))[0] == ["data", "sources", "0",
                                                                         "path"]


def test_known_paths_look_through_typed_and_optional_sections():
    assert known_path("model.decoder.reduce.tokens".split("."))
    assert known_path("data.augment.random_resized_crop.scale".split("."))
    assert not known_path("model.fusion.typo".split("."))
    assert not known_path("model.decoder.reduce.tokens.x".split("."))


def test_the_cli_prints_the_note_on_one_line(capsys):
    assert main(["train", SHAPES, "--set", "model.fusion.type=concat",
                 "--set", "train.max_stpes=1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["tuwen: note: --set model.fusion.type=concat: dropped model.fusion.window "
                   "(not a key of concat)",
                   "tuwen: error: configs/shapes.yaml: invalid config: train.max_stpes: "
                   "unknown key"]
