"""The seed API (ImageTextModel.from_encoders) and save/load of every tower type, offline."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor

from hf_tiny import BERT, IMAGE_CONFIGS, WORDS, save_bert, save_image_model, text_batch
from tuwen import ImageTextModel
from tuwen.data.images import ImageTransform
from tuwen.errors import ConfigError

SMALL = {"hidden_size": 32, "embed_dim": 16, "decoder": {"layers": 1, "heads": 2},
         "max_text_length": 16}
FUSION = {"type": "cross_attention", "layers": 1, "heads": 2}


def outputs(model: ImageTextModel, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(2, 3, model.spec.image_size, model.spec.image_size, generator=g)
    ids, mask = text_batch(min(model.spec.vocab_size, 50), seed)
    with torch.no_grad():
        out = model(pixel_values=px, input_ids=ids, attention_mask=mask, output_attentions=True)
        logits = model.decode(ids, model.encode_image(px).tokens).logits
    return out, logits


def assert_same(a: ImageTextModel, b: ImageTextModel) -> None:
    (out_a, logits_a), (out_b, logits_b) = outputs(a), outputs(b)
    for name in ("fused", "pooled", "image_embeds", "text_embeds"):
        assert torch.equal(getattr(out_a, name), getattr(out_b, name)), name
    assert all(torch.equal(x, y) for x, y in zip(out_a.attentions, out_b.attentions))
    assert torch.equal(logits_a, logits_b)


@pytest.mark.parametrize("image,text", [
    ("vit", "bert"), ("resnet", "lstm"), ("clip_vision_model", "gru"),
    ("siglip_vision_model", "bert"), ("small_cnn", "lstm")])
def test_round_trip_is_identical_offline_and_needs_no_source_folder(image, text, tmp_path):
    sources = tmp_path / "sources"
    image_arg = (str(save_image_model(image, sources / image)) if image in IMAGE_CONFIGS
                 else image)
    text_arg = str(save_bert(sources / "bert")) if text == "bert" else text
    torch.manual_seed(0)
    size = {} if image in IMAGE_CONFIGS else {"image_size": 32}
    model = ImageTextModel.from_encoders(image_arg, text_arg, fusion=FUSION, **SMALL,
                                         **size).eval()
    model.save_pretrained(tmp_path / "saved")
    # the towers must come back from the saved config, not from the source folders
    shutil.rmtree(sources, ignore_errors=True)
    loaded = ImageTextModel.from_pretrained(tmp_path / "saved")
    assert_same(model, loaded)
    files = {p.name for p in (tmp_path / "saved").iterdir()}
    assert {"config.json", "model.safetensors"} <= files
    assert ("preprocessor_config.json" in files) == (image in IMAGE_CONFIGS)
    assert ("tokenizer.json" in files) == (text == "bert")
    if text == "bert":
        assert loaded.tokenizer.bos_token == "[CLS]" and len(loaded.tokenizer) == len(WORDS)
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert set(saved["hf_configs"]) == ({"image_encoder"} if image in IMAGE_CONFIGS else set()) | (
        {"text_encoder", "text_encoder_pooling"} if text == "bert" else set())


def test_from_encoders_takes_hf_config_objects_and_dicts(tmp_path):
    vit = AutoConfig.for_model(**IMAGE_CONFIGS["vit"])
    model = ImageTextModel.from_encoders(vit, BERT, fusion=FUSION, **SMALL).eval()
    assert model.tokenizer is None and model.spec.vocab_size == len(WORDS)
    assert model.spec.image_size == 32  # from the ViT config
    out, _ = outputs(model)
    assert out.fused.shape == (2, 6, 32) and out.image_embeds.shape == (2, 16)
    assert out.attentions[0].shape == (2, 2, 6, 16)  # text tokens -> 4x4 patches
    model.save_pretrained(tmp_path)
    assert_same(model, ImageTextModel.from_pretrained(tmp_path))


def test_named_towers_bring_preprocessing_and_tokenizer(tmp_path):
    image = save_image_model("vit", tmp_path / "vit")
    bert = save_bert(tmp_path / "bert")
    model = ImageTextModel.from_encoders(str(image), str(bert), fusion=FUSION, **SMALL)
    spec = model.spec
    assert (spec.image_size, spec.image_mean, spec.image_std) == (32, (0.1, 0.2, 0.3),
                                                                  (0.4, 0.5, 0.6))
    assert (spec.bos_token_id, spec.eos_token_id, spec.pad_token_id) == (2, 3, 0)  # CLS/SEP/PAD
    assert spec.vocab_size == len(WORDS)


def test_saved_preprocessor_config_reproduces_tuwen_preprocessing(tmp_path):
    model = ImageTextModel.from_encoders(str(save_image_model("vit", tmp_path / "vit")), "lstm",
                                         fusion=FUSION, **SMALL)
    model.save_pretrained(tmp_path / "saved")
    processor = AutoImageProcessor.from_pretrained(tmp_path / "saved")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), np.uint8))
    theirs = processor(image, return_tensors="pt")["pixel_values"][0]
    ours = ImageTransform(32, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))(image)
    assert theirs.shape == ours.shape == (3, 32, 32)
    assert (theirs - ours).abs().mean() < 0.02  # same resize, crop and normalisation


def test_bad_towers_are_clear_errors():
    with pytest.raises(ConfigError, match="from_encoders: image_encoder must be a hub name"):
        ImageTextModel.from_encoders(123, "lstm")
    with pytest.raises(ConfigError, match=r"model.fusion.type: expected .* \(got 'sum'\)"):
        ImageTextModel.from_encoders("small_vit", "lstm", fusion="sum")
    with pytest.raises(ConfigError, match="model.text_encoder: 'vit' .* is a vision model"):
        ImageTextModel.from_encoders("small_vit", IMAGE_CONFIGS["vit"], hidden_size=32)


def python_examples() -> dict[str, str]:
    """The runnable tiny ``from_encoders`` examples of the README and the models page."""
    root, found = Path(__file__).parents[2], {}
    for page in (root / "README.md", root / "docs" / "models.md"):
        text = page.read_text() if page.is_file() else ""
        for block in re.findall(r"```python\n(.*?)```", text, re.S):
            if "ImageTextModel.from_encoders(" in block and "tiny" in block:
                found.setdefault(block, page.name)
    return found


def test_documented_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it saves to ./tiny_model
    examples = python_examples()
    assert examples, "neither README.md nor docs/models.md has a runnable from_encoders example"
    for block, page in examples.items():
        scope: dict = {}
        exec(compile(block, page, "exec"), scope)  # noqa: S102 - our own docs
        assert scope["out"].fused.shape == (2, 7, 64), page
        assert scope["out"].attentions[0].shape == (2, 4, 7, 16), page
        assert torch.equal(scope["same"](scope["px"], scope["ids"], scope["mask"]).fused,
                           scope["model"].eval()(scope["px"], scope["ids"], scope["mask"]).fused)


def test_broken_saved_files_are_one_line_errors(tmp_path):
    from tuwen.errors import TuwenError

    model = ImageTextModel.from_encoders(IMAGE_CONFIGS["vit"], str(save_bert(tmp_path / "b")),
                                         fusion=FUSION, **SMALL)
    model.save_pretrained(tmp_path / "saved")
    config_path = tmp_path / "saved" / "config.json"
    good = config_path.read_text()
    broken = json.loads(good)
    broken["hf_configs"]["image_encoder"]["model_type"] = "no_such_model"
    config_path.write_text(json.dumps(broken))
    with pytest.raises(ConfigError, match=r"model.image_encoder \(saved hf config\): unknown"):
        ImageTextModel.from_pretrained(tmp_path / "saved")
    config_path.write_text(good)
    (tmp_path / "saved" / "tokenizer.json").write_text("{broken")
    with pytest.raises(TuwenError, match="saved: cannot load the saved tokenizer"):
        ImageTextModel.from_pretrained(tmp_path / "saved")
