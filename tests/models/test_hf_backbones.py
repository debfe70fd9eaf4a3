"""Any Hugging Face vision backbone as the image tower: the token grid and feature widths
come from one forward at build time, position embeddings interpolate to the configured image
size, CNNs without ``hidden_size`` work, and what cannot be wired is a one-line error."""

import pytest
import torch
import transformers
from torch import nn

from hf_tiny import IMAGE_CONFIGS, SMALL, hf_model, hf_spec
from tuwen.errors import ConfigError
from tuwen.models.hf_image import probe_backbone
from tuwen.models.image_text_model import ImageTextModel, build_model

transformers.logging.set_verbosity_error()

# tiny configs; the ViT-family ones say 64 or 518 px and are used at 32 (interpolated)
BACKBONES = {
    "vit": {**IMAGE_CONFIGS["vit"], "image_size": 64},
    "deit": {"model_type": "deit", "image_size": 32, "patch_size": 8, **SMALL},
    "dinov2": {"model_type": "dinov2", "image_size": 518, "patch_size": 8, **SMALL},
    "clip_vision_model": {**IMAGE_CONFIGS["clip_vision_model"], "image_size": 64},
    "siglip_vision_model": {**IMAGE_CONFIGS["siglip_vision_model"], "image_size": 64},
    "swin": {"model_type": "swin", "image_size": 32, "patch_size": 2, "embed_dim": 8,
             "depths": [1, 1], "num_heads": [1, 2], "window_size": 4},
    "resnet": IMAGE_CONFIGS["resnet"],
    "convnext": {"model_type": "convnext", "hidden_sizes": [8, 16], "depths": [1, 1],
                 "num_stages": 2, "patch_size": 4},
    "regnet": {"model_type": "regnet", "embedding_size": 8, "hidden_sizes": [8, 16],
               "depths": [1, 1], "groups_width": 8},
    "mobilenet_v2": {"model_type": "mobilenet_v2", "depth_multiplier": 0.35},
    "efficientnet": {"model_type": "efficientnet", "width_coefficient": 0.1,
                     "depth_coefficient": 0.1, "hidden_dim": 128},
}
# (grid at 32 px, feature width the forward reports)
LAYOUT = {"vit": ((4, 4), 32), "deit": ((4, 4), 32), "dinov2": ((4, 4), 32),
          "clip_vision_model": ((4, 4), 32), "siglip_vision_model": ((4, 4), 32),
          "swin": ((8, 8), 16), "resnet": ((4, 4), 16), "convnext": ((4, 4), 16),
          "regnet": ((4, 4), 16), "mobilenet_v2": ((1, 1), 1280),
          "efficientnet": ((1, 1), 128)}


@pytest.mark.parametrize("kind", BACKBONES)
def test_backbone_builds_encodes_and_round_trips(kind, tmp_path):
    image = {"type": "hf", "hf_config": BACKBONES[kind]}
    torch.manual_seed(0)
    model = build_model(hf_spec(image=image)).train()
    grid, width = LAYOUT[kind]
    assert model.image_encoder.proj.in_features == width
    px = torch.randn(2, 3, 32, 32)
    feats = model.encode_image(px)
    assert feats.grid == grid and feats.tokens.shape == (2, grid[0] * grid[1], 32)
    assert feats.pooled.shape == (2, 32)
    (feats.tokens.square().mean() + feats.pooled.square().mean()).backward()
    grads = [p.grad for p in model.image_encoder.backbone.parameters() if p.grad is not None]
    assert len(grads) > 1  # (DINOv2's mask token, unused here, gets none)
    # (a random tiny EfficientNet's activations underflow to ~1e-37: gradients of 0)
    assert kind == "efficientnet" or any(g.abs().sum() > 0 for g in grads)
    model.eval().save_pretrained(tmp_path)
    loaded = ImageTextModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.encode_image(px).tokens, model.encode_image(px).tokens)


def test_a_named_dinov2_takes_its_processors_size_not_its_configs(tmp_path):
    """facebook/dinov2-* say 518 px in config.json and 224 px in their image processor."""
    torch.manual_seed(0)
    hf_model(BACKBONES["dinov2"]).save_pretrained(tmp_path / "dino")
    processor = {"image_processor_type": "BitImageProcessor", "do_center_crop": True,
                 "crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 36},
                 "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    (tmp_path / "dino" / "preprocessor_config.json").write_text(__import__("json").dumps(
        processor))
    model = ImageTextModel.from_encoders(str(tmp_path / "dino"), "gru", hidden_size=32,
                                         fusion="weighted_sum")
    assert model.spec.image_size == 32 and model.spec.image_mean == (0.485, 0.456, 0.406)
    assert model.encode_image(torch.randn(1, 3, 32, 32)).tokens.shape == (1, 16, 32)
    bigger = ImageTextModel.from_encoders(
        {"type": "hf", "name_or_path": str(tmp_path / "dino"), "image_size": 48}, "gru",
        hidden_size=32, fusion="weighted_sum")  # model.image_encoder.image_size
    assert bigger.spec.image_size == 48
    assert bigger.encode_image(torch.randn(1, 3, 48, 48)).grid == (6, 6)


def test_a_named_mobilenet_v2_needs_no_hidden_size(tmp_path):
    torch.manual_seed(0)
    hf_model(BACKBONES["mobilenet_v2"]).save_pretrained(tmp_path / "mnv2")
    model = ImageTextModel.from_encoders(str(tmp_path / "mnv2"), "gru", hidden_size=32,
                                         fusion="weighted_sum", image_size=64)
    assert model.encode_image(torch.randn(1, 3, 64, 64)).tokens.shape == (1, 4, 32)


class Broken(nn.Module):
    def forward(self, pixel_values):
        raise RuntimeError("Input image size (32*32) doesn't match model (224*224).\nmore")


class NoTokens(nn.Module):
    def forward(self, pixel_values):
        return transformers.modeling_outputs.BaseModelOutput(last_hidden_state=None)


def test_what_cannot_be_wired_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"^model\.image_encoder: 'Broken' cannot encode "
                                          r"32-px images \(Input image size") as err:
        probe_backbone(Broken(), 32, "model.image_encoder")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="returns no last_hidden_state"):
        probe_backbone(NoTokens(), 32, "model.image_encoder")
    with pytest.raises(ConfigError, match="'bert'.*is a text model"):
        build_model(hf_spec(image={"type": "hf", "hf_config": {"model_type": "bert", **SMALL}}))


def test_probing_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    model = build_model(hf_spec(image={"type": "hf", "hf_config": BACKBONES["resnet"]}))
    fresh = hf_model(BACKBONES["resnet"])
    stats = [b for n, b in model.image_encoder.backbone.named_buffers() if "running_mean" in n]
    assert all(torch.equal(s, torch.zeros_like(s)) for s in stats) and stats
    assert model.image_encoder.backbone.training == fresh.training
