import pytest
import torch
from safetensors.torch import load_file, save_file

from tiny import tiny_spec
from tuwen.errors import TuwenError
from tuwen.models.generation import beam_generate, greedy_generate
from tuwen.models.image_text_model import ImageTextModel, build_model


def test_forward_output_shapes(tiny_model):
    px = torch.randn(2, 3, 32, 32)
    ids = torch.randint(7, 50, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    out = tiny_model(pixel_values=px, input_ids=ids, attention_mask=mask, output_attentions=True)
    assert out.fused.shape == (2, 5, 32) and out.pooled.shape == (2, 32)
    assert out.image_embeds.shape == (2, 16) and out.text_embeds.shape == (2, 16)
    assert torch.allclose(out.image_embeds.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert len(out.attentions) == 2
    att = out.attentions[0]
    assert att.shape == (2, 2, 5, 16)  # (B, heads, text tokens, 4x4 image patches)
    assert torch.allclose(att.sum(-1), torch.ones(2, 2, 5), atol=1e-5)


def test_eager_and_fused_attention_agree(tiny_model):
    px, ids = torch.randn(2, 3, 32, 32), torch.randint(7, 50, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    fast = tiny_model(px, ids, mask)
    eager = tiny_model(px, ids, mask, output_attentions=True)
    assert torch.allclose(fast.fused[0], eager.fused[0], atol=1e-5)
    assert torch.allclose(fast.fused[1, :3], eager.fused[1, :3], atol=1e-5)


def test_padding_does_not_change_real_tokens(tiny_model):
    px = torch.randn(1, 3, 32, 32)
    ids = torch.randint(7, 50, (1, 4))
    short = tiny_model(px, ids, torch.ones(1, 4, dtype=torch.long)).pooled
    padded_ids = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    padded_mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    long = tiny_model(px, padded_ids, padded_mask).pooled
    assert torch.allclose(short, long, atol=1e-5)


def test_save_load_round_trip_gives_identical_outputs(tiny_model, tmp_path):
    px, ids = torch.randn(2, 3, 32, 32), torch.randint(7, 50, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    tiny_model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors"}
    loaded = ImageTextModel.from_pretrained(tmp_path)
    a, b = tiny_model(px, ids, mask), loaded(px, ids, mask)
    assert torch.equal(a.fused, b.fused) and torch.equal(a.image_embeds, b.image_embeds)
    assert torch.equal(greedy_generate(tiny_model, tiny_model.encode_image(px).tokens, 5),
                       greedy_generate(loaded, loaded.encode_image(px).tokens, 5))


def test_load_errors_name_the_file(tmp_path, tiny_model):
    with pytest.raises(TuwenError, match="config.json: missing"):
        ImageTextModel.from_pretrained(tmp_path)
    tiny_model.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(TuwenError, match="not a valid tuwen model config"):
        ImageTextModel.from_pretrained(tmp_path)


def test_small_cnn_builds_and_runs():
    torch.manual_seed(0)
    model = build_model(tiny_spec(image_encoder={"type": "small_cnn", "patch_size": 8,
                                                 "layers": 1}))
    feats = model.encode_image(torch.randn(2, 3, 32, 32))
    assert feats.tokens.shape == (2, 16, 32) and feats.grid == (4, 4)


def test_beam_of_one_equals_greedy_and_beam_is_no_worse(tiny_model):
    torch.manual_seed(3)
    tokens = tiny_model.encode_image(torch.randn(3, 3, 32, 32)).tokens
    greedy = greedy_generate(tiny_model, tokens, 8)
    assert greedy.shape[0] == 3
    beam1 = beam_generate(tiny_model, tokens, 8, beam_size=1, length_penalty=0.0)
    # both stop at EOS or the length limit; compare up to EOS
    eos = tiny_model.spec.eos_token_id

    def cut(seq):
        return seq[: seq.index(eos) + 1] if eos in seq else seq

    for g, b in zip(greedy.tolist(), beam1.tolist()):
        assert cut(g)[: len(cut(b))] == cut(b)[: len(cut(g))]


def test_weights_of_another_architecture_are_a_clear_error(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "a")
    other = build_model(tiny_spec(hidden_size=64))
    other.save_pretrained(tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").replace(tmp_path / "a" / "model.safetensors")
    with pytest.raises(TuwenError, match="weights do not fit"):
        ImageTextModel.from_pretrained(tmp_path / "a")
    (tmp_path / "a" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(TuwenError, match="weights do not fit"):
        ImageTextModel.from_pretrained(tmp_path / "a")


def test_spec_keeps_the_text_normalisation_the_model_was_trained_with():
    from tuwen.config import TextConfig
    from tuwen.models.spec import ModelSpec

    spec = tiny_spec()
    spec.text = TextConfig(strip_punctuation=True, max_words=12)
    again = ModelSpec.from_dict(spec.to_dict())
    assert again.text == spec.text
    legacy = spec.to_dict()
    del legacy["text"]  # a model saved before the key existed: the defaults
    assert ModelSpec.from_dict(legacy).text == TextConfig()


def test_a_model_saved_with_a_scalar_temperature_still_loads(tiny_model, tmp_path):
    """logit_scale became shape (1,) so that FSDP can shard it; older files hold a 0-d one."""
    tiny_model.save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    weights["itc_head.logit_scale"] = weights["itc_head.logit_scale"].reshape(())
    save_file(weights, str(tmp_path / "model.safetensors"))
    loaded = ImageTextModel.from_pretrained(tmp_path)
    assert loaded.itc_head.logit_scale.shape == (1,)
    assert torch.equal(loaded.itc_head.scale(), tiny_model.itc_head.scale())
