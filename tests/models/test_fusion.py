"""The three fusion types: one contract, their own semantics, trainable through every task."""

import json
import math

import pytest
import torch

from tiny import tiny_overrides, tiny_spec
from tuwen.apps.cli import main
from tuwen.config import load_config
from tuwen.errors import ConfigError
from tuwen.models.fusion_concat import ConcatFusion
from tuwen.models.fusion_weighted_sum import WeightedSumFusion
from tuwen.models.image_text_model import ImageTextModel, build_model
from tuwen.tasks.table import joint_step

FUSIONS = {"concat": {"type": "concat", "layers": 2, "heads": 2},
           "weighted_sum": {"type": "weighted_sum", "gate": "vector"},
           "weighted_sum_scalar": {"type": "weighted_sum", "gate": "scalar"},
           "cross_attention": {"type": "cross_attention", "layers": 2, "heads": 2},
           "cross_attention_window": {"type": "cross_attention", "layers": 2, "heads": 2,
                                      "window": 1}}
ALL = {"caption": 1.0, "itc": 1.0, "itm": 1.0, "vqa": 1.0}


def model_with(name: str, seed: int = 0) -> ImageTextModel:
    torch.manual_seed(seed)
    return build_model(tiny_spec(fusion=FUSIONS[name])).eval()


def inputs(b=2, length=5, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(b, length, 32, generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    mask[-1, 3:] = 0
    return text, mask, torch.randn(b, n, 32, generator=g)


@pytest.mark.parametrize("name", FUSIONS)
def test_every_fusion_keeps_the_contract(name):
    fusion = model_with(name).fusion
    text, mask, image = inputs()
    fast = fusion(text, mask, image)
    assert fast.fused.shape == (2, 5, 32) and torch.equal(fast.pooled, fast.fused[:, 0])
    assert fast.attentions is None
    out = fusion(text, mask, image, output_attentions=True)
    heads = 1 if name.startswith("weighted_sum") else 2
    layers = 1 if name.startswith("weighted_sum") else 2
    assert len(out.attentions) == layers
    for att in out.attentions:
        assert att.shape == (2, heads, 5, 16) and (att >= 0).all()
        assert (att.sum(-1) <= 1 + 1e-5).all()
    # the eager path (weights materialised) computes the same as the fused kernels
    assert torch.allclose(out.fused[0], fast.fused[0], atol=1e-5)
    assert torch.allclose(out.fused[1, :3], fast.fused[1, :3], atol=1e-5)
    gate_dim = {"weighted_sum": 32, "weighted_sum_scalar": 1}.get(name)
    if gate_dim is None:
        assert out.gates is None
    else:
        assert out.gates.shape == (2, 5, gate_dim) and ((out.gates > 0) & (out.gates < 1)).all()


@pytest.mark.parametrize("name", FUSIONS)
def test_padding_does_not_change_real_tokens_and_the_image_matters(name):
    fusion = model_with(name).fusion
    text, _, image = inputs(b=1, length=4)
    ones = torch.ones(1, 4, dtype=torch.long)
    short = fusion(text, ones, image).fused
    padded = torch.cat([text, torch.randn(1, 3, 32)], dim=1)
    long = fusion(padded, torch.cat([ones, torch.zeros(1, 3, dtype=torch.long)], 1), image).fused
    assert torch.allclose(short, long[:, :4], atol=1e-5)
    other = fusion(text, ones, torch.randn_like(image)).fused
    assert (short - other).abs().max() > 1e-3


def test_concat_attentions_are_the_text_to_image_block_of_the_joint_attention():
    torch.manual_seed(0)
    fusion = ConcatFusion(dim=32, layers=1, heads=2).eval()
    text, mask, image = inputs()
    out = fusion(text, mask, image, output_attentions=True)
    # by hand: modality embeddings, [text; image], masked softmax(q k^T / sqrt(d_head))
    x = torch.cat([text + fusion.modality.weight[0], image + fusion.modality.weight[1]], 1)
    attn = fusion.blocks[0].attn
    h = fusion.blocks[0].norm1(x)
    q = attn.q(h).view(2, 21, 2, 16).transpose(1, 2)
    k = attn.kv(h)[..., :32].view(2, 21, 2, 16).transpose(1, 2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(16)
    keep = torch.cat([mask, torch.ones(2, 16, dtype=torch.long)], 1).bool()
    full = scores.masked_fill(~keep[:, None, None, :], float("-inf")).softmax(-1)
    assert torch.allclose(out.attentions[0], full[:, :, :5, 5:], atol=1e-5)
    # each text row splits its attention between the text (the rest) and the image
    assert torch.allclose(out.attentions[0].sum(-1) + full[:, :, :5, :5].sum(-1),
                          torch.ones(2, 2, 5), atol=1e-5)


@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_weighted_sum_gate_chooses_between_text_and_aligned_image(gate):
    torch.manual_seed(0)
    fusion = WeightedSumFusion(dim=32, gate=gate).eval()
    text, mask, image = inputs()
    with torch.no_grad():
        fusion.gate.weight.zero_()
        fusion.gate.bias.fill_(30.0)  # g = 1: text only, whatever the image
    a, b = fusion(text, mask, image), fusion(text, mask, torch.randn_like(image))
    assert torch.allclose(a.fused, b.fused, atol=1e-5) and torch.allclose(a.gates, torch.ones(1))
    with torch.no_grad():
        fusion.gate.bias.fill_(-30.0)  # g = 0: the aligned image only
        fusion.key.weight.zero_()       # all scores equal: uniform pooling -> mean patch
        fusion.key.bias.zero_()
    out = fusion(text, mask, image, output_attentions=True)
    assert torch.allclose(out.attentions[0], torch.full((2, 1, 5, 16), 1 / 16))
    mean_patch = fusion.image_proj(image).mean(1, keepdim=True)  # (B, 1, D)
    expected = fusion.norm(mean_patch + fusion.mlp(fusion.mlp_norm(mean_patch)))
    assert torch.allclose(out.fused, expected.expand(-1, 5, -1), atol=1e-5)


def test_fusion_config_keys_are_checked_per_type():
    assert load_config(None, ["model.fusion={layers: 3}"]).model.fusion.type == "cross_attention"
    ws = load_config(None, ["model.fusion={type: weighted_sum, gate: scalar}"]).model.fusion
    assert ws.gate == "scalar"
    with pytest.raises(ConfigError, match=r"model\.fusion\.gate: unknown key for type 'concat'"):
        load_config(None, ["model.fusion.type=concat", "model.fusion.gate=scalar"])
    with pytest.raises(ConfigError, match=r"model\.fusion\.layers: unknown key for type "
                                          r"'weighted_sum'"):
        load_config(None, ["model.fusion={type: weighted_sum, layers: 2}"])
    with pytest.raises(ConfigError, match=r"model\.fusion\.gate: expected 'scalar' or 'vector'"):
        load_config(None, ["model.fusion={type: weighted_sum, gate: matrix}"])
    with pytest.raises(ConfigError, match=r"model\.fusion\.type: expected 'concat' or "
                                          r"'weighted_sum' or 'cross_attention' \(got 'sum'\)"):
        load_config(None, ["model.fusion.type=sum"])


@pytest.mark.parametrize("name", ["concat", "weighted_sum", "cross_attention"])
def test_each_fusion_trains_through_every_task(name, tiny_batch):
    model = model_with(name).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(1)  # ITM negative sampling
    first, _ = joint_step(model, tiny_batch, ALL)
    for _ in range(30):
        total, losses = joint_step(model, tiny_batch, ALL)
        opt.zero_grad()
        total.backward()
        opt.step()
    assert set(losses) == set(ALL)
    assert total < 0.6 * first, (first.item(), total.item())
    assert losses["itm"] < 0.69, losses["itm"].item()  # the fusion is what ITM reads


@pytest.mark.parametrize("name", FUSIONS)
def test_save_load_round_trip_per_fusion(name, tmp_path):
    model = model_with(name)
    model.save_pretrained(tmp_path)
    loaded = ImageTextModel.from_pretrained(tmp_path)
    px, ids = torch.randn(2, 3, 32, 32), torch.randint(7, 50, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    a = model(px, ids, mask, output_attentions=True)
    b = loaded(px, ids, mask, output_attentions=True)
    assert torch.equal(a.fused, b.fused) and torch.equal(a.attentions[-1], b.attentions[-1])


def test_cli_trains_with_concat_fusion(tiny_shapes, tmp_path):
    out = tmp_path / "run"
    sets = [*tiny_overrides(tiny_shapes, max_steps=3, save_every=3),
            "model.fusion={type: concat, layers: 1, heads: 2}"]
    assert main(["train", "configs/shapes.yaml", "--out", str(out),
                 *[arg for s in sets for arg in ("--set", s)]]) == 0
    spec = json.loads((out / "model" / "config.json").read_text())
    assert spec["model"]["fusion"] == {"type": "concat", "layers": 1, "heads": 2}
    assert isinstance(ImageTextModel.from_pretrained(out / "model").fusion, ConcatFusion)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").open()]
    assert losses and all(math.isfinite(x) for x in losses)
