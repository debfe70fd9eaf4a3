"""The builder returns initialised components; ImageTextModel assembles itself from them."""

import torch
from torch import nn

from hf_tiny import IMAGE_CONFIGS, hf_spec
from tiny import tiny_spec
from tuwen.models.builder import Components, build_components
from tuwen.models.from_encoders import DEFAULT_VOCAB_SIZE, spec_from_encoders
from tuwen.models.fusion_cross_attention import CrossAttentionFusion
from tuwen.models.image_text_model import ImageTextModel, build_model

PARTS = ("image_encoder", "text_encoder", "fusion", "decoder")
HEADS = ("itc_head", "itm_head", "vqa_head")


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_model_holds_exactly_the_built_components():
    parts = build_components(tiny_spec())
    model = ImageTextModel.from_components(parts)
    assert isinstance(parts, Components) and isinstance(parts.fusion, CrossAttentionFusion)
    assert model.spec is parts.spec
    for name in PARTS:
        assert getattr(model, name) is getattr(parts, name), name
    assert tuple(parts.heads) == model.head_names == HEADS
    for name in HEADS:
        assert getattr(model, name) is parts.heads[name], name
    own = {id(p) for module in parts.modules() for p in module.parameters()}
    assert own == {id(p) for p in model.parameters()}


def test_components_come_initialised():
    torch.manual_seed(0)
    fusion = build_components(tiny_spec()).fusion
    linears = [m for m in fusion.modules() if isinstance(m, nn.Linear)]
    assert linears
    # PyTorch's default for a 32-wide Linear has std ~0.1; the builder's init has 0.02
    for linear in linears:
        assert 0.01 < linear.weight.std() < 0.03
        assert linear.bias is None or not linear.bias.any()


def test_from_spec_build_model_and_from_pretrained_agree(tmp_path):
    torch.manual_seed(0)
    a = ImageTextModel.from_spec(tiny_spec())
    torch.manual_seed(0)
    b = build_model(tiny_spec())
    assert same_weights(a, b)
    a.save_pretrained(tmp_path)
    assert same_weights(a, ImageTextModel.from_pretrained(tmp_path))


def test_the_returned_spec_records_the_hf_tower_configs_and_the_given_one_is_untouched():
    spec = hf_spec(image={"type": "hf", "hf_config": IMAGE_CONFIGS["vit"]})
    parts = build_components(spec)
    assert spec.hf_configs == {}
    assert set(parts.spec.hf_configs) == {"image_encoder"}
    assert parts.spec.hf_configs["image_encoder"]["model_type"] == "vit"


def test_spec_from_encoders_resolves_the_spec_that_from_encoders_builds():
    options = {"hidden_size": 32, "image_size": 32, "embed_dim": 16,
               "fusion": {"type": "concat", "layers": 1, "heads": 2},
               "decoder": {"layers": 1, "heads": 2}}
    spec, tokenizer, _ = spec_from_encoders("small_cnn", "gru", **options)
    assert tokenizer is None and spec.vocab_size == DEFAULT_VOCAB_SIZE
    assert (spec.model.image_encoder.type, spec.model.text_encoder.type) == ("small_cnn", "gru")
    torch.manual_seed(0)
    built = ImageTextModel.from_encoders("small_cnn", "gru", **options)
    torch.manual_seed(0)
    assert built.spec == spec and built.tokenizer is None
    assert same_weights(built, ImageTextModel.from_spec(spec))
