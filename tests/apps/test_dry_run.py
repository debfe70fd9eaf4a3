"""``tuwen train CONFIG --dry-run`` on every shipped config: offline, tiny, all objectives."""

from pathlib import Path

import pytest
import torch

from tuwen.apps.cli import main
from tuwen.apps.dry_run import dry_run, hub_model_type, tiny_hf_config, tiny_model
from tuwen.config import load_config
from tuwen.tasks.table import trained

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_dry_runs(path, capsys):
    assert main(["train", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "TINY STAND-IN" in out and "forward+backward ok" in out
    config = load_config(path)
    for task, weight in trained(config.data.provides(), config).items():
        assert weight == 0 or f"{task}=" in out  # every active objective ran


def test_report_keeps_architectures_and_trains_every_part():
    config = load_config(Path(CONFIGS[0]).parent / "vqav2_vit_bert_gpt2.yaml")
    model, _, report = tiny_model(config)
    assert {k: v["model_type"] for k, v in report.tiny_towers.items()} == {
        "image_encoder": "vit", "text_encoder": "bert", "decoder": "gpt2"}
    assert model.spec.model.decoder.conditioning == "cross_attention"
    assert model.spec.model.fusion.type == "cross_attention"
    report = dry_run(config)
    assert set(report.losses) == {"caption", "itc", "itm", "vqa"}
    assert all(torch.isfinite(torch.tensor(v)) for v in report.losses.values())
    assert report.parameters["decoder"] > 0
    assert not any(report.data_files.values())  # data/real is not here


@pytest.mark.parametrize(("name", "modality", "expected"), [
    ("openai/clip-vit-base-patch32", "image", "clip_vision_model"),
    ("google/siglip-base-patch16-224", "image", "siglip_vision_model"),
    ("HuggingFaceTB/SmolLM-135M", "lm", "llama"),
    ("microsoft/resnet-18", "image", "resnet"),  # not in the table: read from the name
])
def test_hub_names_map_to_their_tiny_architecture(name, modality, expected):
    tiny = tiny_hf_config(hub_model_type(name, "model.x"), modality, "model.x")
    assert tiny["model_type"] == expected
    assert tiny.get("hidden_size", 32) == 32


def test_unknown_hub_name_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  text_encoder: {type: hf, name_or_path: someone/mystery-model}\n")
    assert main(["train", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "model.text_encoder.name_or_path" in err and "mystery-model" in err



def test_bert_with_a_pretrained_gpt2_dry_runs():
    """Two tokenizers (BERT's and GPT-2's) are a supported pairing."""
    report = dry_run(load_config(CONFIGS[0].parent / "vqav2_vit_bert_gpt2.yaml"))
    assert set(report.losses) >= {"caption", "itc", "itm", "vqa"}
