import pytest
import yaml

from tuwen.config import load_config, save_config
from tuwen.errors import ConfigError, TuwenWarning
from tuwen.tasks.table import load_run_config, trained


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_load_and_round_trip(tmp_path):
    cfg = load_config(None)
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_repo_config_is_valid():
    cfg = load_config("configs/shapes.yaml")
    assert cfg.model.fusion.type == "cross_attention"
    assert cfg.data.root == "data/shapes"


def test_unknown_key_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.max_stpes: unknown key"):
        load_config(write(tmp_path, "train:\n  max_stpes: 10\n"))


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.batch_size.*'many'"):
        load_config(write(tmp_path, "train:\n  batch_size: many\n"))


def test_wrong_choice_names_the_allowed_values(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.fusion\.type.*cross_attention"):
        load_config(None, ["model.fusion.type=sum"])


def test_set_overrides_are_typed_and_validated():
    cfg = load_config(None, ["train.max_steps=7", "train.precision=bf16", "data.root=x/y"])
    assert cfg.train.max_steps == 7 and cfg.train.precision == "bf16" and cfg.data.root == "x/y"
    with pytest.raises(ConfigError, match=r"train\.max_steps"):
        load_config(None, ["train.max_steps=-3"])
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        load_config(None, ["train.max_steps"])


def test_impossible_combinations(tmp_path):
    with pytest.raises(ConfigError, match=r"heads=3 must divide model\.hidden_size=128"):
        load_config(None, ["model.fusion.heads=3"])
    with pytest.raises(ConfigError, match="no task to train"):
        load_run_config(None, ["train.tasks.caption=0", "train.tasks.itc=0",
                               "train.tasks.itm=0", "train.tasks.vqa=0"])
    with pytest.raises(ConfigError, match=r"train\.tasks\.vqa=1\.0 needs a data source with "
                                          "vqa labels"):
        load_run_config(None, ["data.sources=[{format: karpathy}]", "train.tasks.vqa=1"])
    with pytest.raises(ConfigError, match="no task to train"):
        load_run_config(None, ["data.sources=[{format: karpathy}]", "train.tasks.caption=0",
                               "train.tasks.itc=0", "train.tasks.itm=0"])
    with pytest.raises(ConfigError, match="specific_captions counts every training caption"):
        load_config(None, ["data.sources=[{format: webdataset, shards: 'a/{0..3}.tar'}]",
                           "train.tasks.vqa=0", "train.task_options.itc.specific_captions=true"])


def test_task_names_and_options_are_checked_against_the_table():
    with pytest.raises(ConfigError, match=r"train\.tasks\.captoin: unknown task \(known: "
                                          "caption, itc"):
        load_run_config(None, ["train.tasks.captoin=1"])
    with pytest.raises(ConfigError, match=r"train\.task_options\.caption\.smoothing: unknown "
                                          "key"):
        load_run_config(None, ["train.task_options.caption.smoothing=0.1"])
    with pytest.raises(ConfigError, match=r"train\.task_schedule\[0\]\.vqq: unknown task"):
        load_run_config(None, ["train.task_schedule=[{step: 0, vqq: 1}]"])
    with pytest.raises(ConfigError, match=r"eval\.tasks\.captions: unknown task"):
        load_run_config(None, ["eval.tasks=[captions]"])
    # a key that moved (a run directory written before) is read in its new place, noted
    with pytest.warns(TuwenWarning, match=r"train\.label_smoothing is now "
                                          r"train\.task_options\.caption\.label_smoothing"):
        moved = load_config(None, ["train.label_smoothing=0.1", "data.spatial_negatives=true"])
    assert moved.train.task_options == {"caption": {"label_smoothing": 0.1},
                                        "itm": {"spatial_negatives": True}}
    assert load_run_config(None, ["train.task_options.caption.label_smoothing=0.1"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [1,\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_resolved_config_is_plain_yaml(tmp_path):
    save_config(load_config(None, ["train.seed=3"]), tmp_path / "r.yaml")
    raw = yaml.safe_load((tmp_path / "r.yaml").read_text())
    assert raw["train"]["seed"] == 3 and set(raw) == {"data", "model", "train", "eval"}


def test_image_size_and_patch_size_must_fit():
    with pytest.raises(ConfigError, match=r"data\.image_size=72 is not a multiple of model"):
        load_config(None, ["data.image_size=72"])
    with pytest.raises(ConfigError, match="power of two"):
        load_config(None, ["model.image_encoder.patch_size=12", "data.image_size=96"])


def test_unset_task_weights_follow_the_sources_and_stay_unset_when_saved(tmp_path):
    cfg = load_config(None, ["data.sources=[{format: karpathy}]"])  # no train.tasks.vqa: 0
    assert cfg.train.tasks == {}
    assert {k: w for k, w in trained(cfg.data.provides(), cfg).items() if w} == {
        "caption": 1, "itc": 1, "itm": 1}
    save_config(cfg, tmp_path / "r.yaml")
    assert yaml.safe_load((tmp_path / "r.yaml").read_text())["train"]["tasks"] == {}
    assert load_config(tmp_path / "r.yaml") == cfg


def test_a_typed_union_names_its_kinds_and_rejects_keys_of_another():
    with pytest.raises(ConfigError, match=r"model\.image_encoder\.window: unknown key for type "
                                          r"'small_vit'"):
        load_config(None, ["model.image_encoder.window=1"])
    with pytest.raises(ConfigError, match=r"model\.decoder\.type: expected 'transformer' or "
                                          r"'hf_causal_lm' \(got 'rnn'\)"):
        load_config(None, ["model.decoder.type=rnn"])
