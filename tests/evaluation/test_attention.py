"""Attention maps: forced onto one patch through the real model code, the heatmap peaks there."""

import numpy as np
import pytest
import torch

from tiny import tiny_spec
from tuwen.data.answers import AnswerVocab
from tuwen.data.images import ImageTransform
from tuwen.data.text import TextNormalizer
from tuwen.data.tokenizer import save_tokenizer, train_tokenizer
from tuwen.errors import TuwenError
from tuwen.evaluation.attention import (
    attention_maps,
    attention_rollout,
    parse_pick,
    select,
    upsample,
)
from tuwen.model_files import VOCAB_FILE
from tuwen.models.builder import FUSIONS
from tuwen.models.image_text_model import build_model
from tuwen.tasks import vqa
from tuwen.tasks.saved_model import SavedModel

TEXTS = ["a red circle left of a blue square", "a green triangle above a red circle",
         "how many shapes are there?", "what colour is the square?"]
GRID = (4, 4)                 # 32-px images, patch 8
TARGET, SOURCE = 6, 13        # decoder/fusion look at patch (1, 2); the ViT routes it from (3, 1)


def hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def head_vector(row: int, dim: int = 32, heads: int = 2) -> torch.Tensor:
    """A +-1 vector, zero-mean (LayerNorm leaves it as is), orthogonal per head slice to the
    vectors of the other rows."""
    return hadamard(dim // heads)[row].repeat(heads)


U, W, Z = head_vector(1), head_vector(2), head_vector(3)


def aim(attention: torch.nn.Module, direction: torch.Tensor, scale: float = 5.0) -> None:
    """Constant queries along ``direction``, keys = the input: the score of a key is its
    projection on ``direction`` (16 / 4 * scale = 20 for the aligned one, 0 for the others)."""
    dim = direction.numel()
    attention.q.weight.zero_()
    attention.q.bias.copy_(scale * direction)
    attention.kv.weight[:dim].copy_(torch.eye(dim))
    attention.kv.bias[:dim].zero_()


def keep_residual_stream(block) -> None:
    """Zero the attention and MLP outputs: the block's output is its input."""
    block.attn.out.weight.zero_()
    block.attn.out.bias.zero_()
    block.mlp.net[2].weight.zero_()
    block.mlp.net[2].bias.zero_()


def force_image_tokens(model, tokens: dict[int, torch.Tensor] | None = None) -> None:
    """ViT output tokens: U at SOURCE, W at TARGET (or ``tokens``), Z elsewhere; every ViT
    self-attention layer routes all tokens to SOURCE and changes nothing, so each layer sees
    the same tokens."""
    vit = model.image_encoder
    vit.stem[-2].weight.zero_()  # the stem's last BatchNorm: the stem outputs zeros
    vit.stem[-2].bias.zero_()
    pos = Z.repeat(1, GRID[0] * GRID[1] + 1, 1)
    for patch, vector in (tokens or {SOURCE: U, TARGET: W}).items():
        pos[0, 1 + patch] = vector
    vit.pos.copy_(pos)
    for block in vit.blocks:
        aim(block.attn, U)
        keep_residual_stream(block)


def force_text_tokens(model) -> None:
    """Every text token is Z, orthogonal to W: only the image patch at TARGET matches W."""
    norm = model.text_encoder.norm
    norm.weight.zero_()
    norm.bias.copy_(Z)


def force_cross_attention(module) -> None:
    for block in module.blocks:
        aim(block.cross_attn, W)


def force_concat(fusion) -> None:
    """Joint self-attention aimed at W; zero modality embeddings and residual branches keep
    every layer's input [Z..Z; image tokens]."""
    fusion.modality.weight.zero_()
    for block in fusion.blocks:
        aim(block.attn, W)
        keep_residual_stream(block)


def force_weighted_sum(fusion) -> None:
    """The attention pooling's query is W for every token, its key the image token."""
    fusion.query.weight.zero_()
    fusion.query.bias.copy_(5.0 * W)
    fusion.key.weight.copy_(torch.eye(W.numel()))
    fusion.key.bias.zero_()


FORCE_FUSION = {"cross_attention": force_cross_attention, "concat": force_concat,
                "weighted_sum": force_weighted_sum}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=200)


def loaded_model(tokenizer, fusion="cross_attention", **overrides) -> SavedModel:
    torch.manual_seed(0)
    fusion_cfg = {"type": fusion} if fusion == "weighted_sum" else {"type": fusion,
                                                                     "layers": 2, "heads": 2}
    spec = tiny_spec(image_encoder={"type": "small_vit", "patch_size": 8, "layers": 2,
                                    "heads": 2}, fusion=fusion_cfg, **overrides)
    spec.vocab_size = len(tokenizer)
    model = build_model(spec).eval()
    with torch.no_grad():
        force_image_tokens(model)
        force_text_tokens(model)
        force_cross_attention(model.decoder)
        FORCE_FUSION[fusion](model.fusion)
    vocab = AnswerVocab(["yes", "no", "2", "3", "red", "blue", "green"])
    return SavedModel(model, tokenizer, None, vocab, ImageTransform(32, (0.5,) * 3, (0.5,) * 3),
                      TextNormalizer())


def argmax_cell(maps: np.ndarray) -> list[tuple[int, int]]:
    return [np.unravel_index(m.argmax(), m.shape) for m in maps]


TARGET_CELL, SOURCE_CELL = divmod(TARGET, GRID[1]), divmod(SOURCE, GRID[1])
PIXELS = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("layer,head", [("mean", "mean"), (0, 1), (-1, 0)])
def test_decoder_map_peaks_on_the_forced_patch(tokenizer, layer, head):
    loaded = loaded_model(tokenizer)
    result = attention_maps(loaded, PIXELS, text="a red circle", layer=layer, head=head)
    assert result.tokens == ["a", "red", "circle"] and result.grid == GRID
    assert result.maps.shape == (3, *GRID)
    assert argmax_cell(result.maps) == [TARGET_CELL] * 3
    peak = result.maps[:, TARGET_CELL[0], TARGET_CELL[1]]
    assert np.allclose(peak, 1.0, atol=1e-6)  # a softmax gap of 20


def test_each_token_gets_the_decoder_row_that_predicts_it(tokenizer):
    """Decoder position k looks at patch PATCHES[k]; [BOS] a red circle -> the map of "a" is
    position 0's (which predicts it), of "red" position 1's, of "circle" position 2's."""
    patches = [2, 7, 9, 14]
    vectors = [head_vector(4 + k) for k in range(len(patches))]
    loaded = loaded_model(tokenizer)
    decoder = loaded.model.decoder
    with torch.no_grad():
        force_image_tokens(loaded.model, dict(zip(patches, vectors)))
        decoder.pos.zero_()
        for k, vector in enumerate(vectors):  # LayerNorm(embedding + 10 v) ~ v
            decoder.pos[0, k] = 10 * vector
        for block in decoder.blocks:
            keep_residual_stream(block)
            block.cross_attn.q.weight.copy_(5 * torch.eye(32))
            block.cross_attn.q.bias.zero_()
    result = attention_maps(loaded, PIXELS, text="a red circle")
    assert argmax_cell(result.maps) == [divmod(p, GRID[1]) for p in patches[:3]]


def test_generated_caption_gets_one_map_per_token(tokenizer):
    loaded = loaded_model(tokenizer)
    result = attention_maps(loaded, PIXELS, max_new_tokens=6)
    assert 1 <= len(result.tokens) <= 6 and len(result.maps) == len(result.tokens)
    assert argmax_cell(result.maps) == [TARGET_CELL] * len(result.tokens)
    assert result.text  # the decoded generated caption


@pytest.mark.parametrize("fusion", sorted(FORCE_FUSION))
def test_fusion_map_peaks_on_the_forced_patch_for_every_fusion(tokenizer, fusion):
    loaded = loaded_model(tokenizer, fusion)
    result = attention_maps(loaded, PIXELS, text="a red circle", source="fusion")
    assert result.tokens == ["[CLS]", "a", "red", "circle"]  # [SEP] dropped
    assert argmax_cell(result.maps) == [TARGET_CELL] * 4
    answered = attention_maps(loaded, PIXELS, question="what colour is the square?",
                              source="fusion")
    assert answered.answer in loaded.vocab and answered.text == "what colour is the square?"
    assert argmax_cell(answered.maps) == [TARGET_CELL] * len(answered.tokens)
    if fusion == "weighted_sum":  # the gate of each token is shown beside its map
        gates = loaded.model.fuse(loaded.model.encode_text(*question_ids(loaded)),
                                  loaded.model.encode_image(PIXELS).tokens).gates
        kept = gates[0].mean(dim=-1)[:-1]  # [SEP] (last) has no map
        assert np.allclose(answered.gates, kept.detach().numpy(), atol=1e-6)
    else:
        assert answered.gates is None


def question_ids(loaded):
    enc = loaded.tokenizer(["what colour is the square?"], return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_every_fusion_type_has_a_forced_attention_test():
    assert set(FUSIONS) <= set(FORCE_FUSION), "add a FORCE_FUSION entry for the new fusion"


def test_rollout_carries_the_map_back_to_the_input_patch(tokenizer):
    """Two ViT layers that route everything from SOURCE: rollout = 0.25 I + 0.75 (to SOURCE),
    so the decoder's look at TARGET comes 3/4 from SOURCE's input patch."""
    loaded = loaded_model(tokenizer)
    result = attention_maps(loaded, PIXELS, text="a red circle", rollout=True)
    assert argmax_cell(result.maps) == [SOURCE_CELL] * 3
    expected = np.zeros(GRID)
    expected[TARGET_CELL], expected[SOURCE_CELL] = 0.25, 0.75
    assert np.allclose(result.maps, expected[None], atol=1e-5)


def test_rollout_matches_a_hand_computation():
    g = torch.Generator().manual_seed(3)
    layers = [torch.rand(1, 3, 5, 5, generator=g).softmax(-1) for _ in range(3)]
    expected = np.eye(5)
    for a in layers:
        a = a[0].mean(0).numpy() * 0.5 + 0.5 * np.eye(5)
        expected = (a / a.sum(1, keepdims=True)) @ expected
    assert np.allclose(attention_rollout(layers).numpy(), expected, atol=1e-6)


def test_select_averages_or_picks_layers_and_heads():
    w = torch.arange(2 * 3 * 4 * 5, dtype=torch.float).reshape(2, 1, 3, 4, 5)  # (layers,B,H,L,N)
    layers = tuple(w)
    assert torch.equal(select(layers, 1, 2), w[1, 0, 2])
    assert torch.allclose(select(layers), w[:, 0].mean(dim=(0, 1)))
    assert torch.allclose(select(layers, "mean", -1), w[:, 0, -1].mean(0))
    assert torch.equal(select(w[0]), w[0, 0].mean(0))  # one bare tensor: one layer
    with pytest.raises(TuwenError, match="layer 2 does not exist.*2 layers"):
        select(layers, 2, 0)
    with pytest.raises(TuwenError, match="head -4 does not exist"):
        select(layers, 0, -4)
    assert parse_pick("mean", "layer") == "mean" and parse_pick("-1", "layer") == -1
    with pytest.raises(TuwenError, match="--head 'last'"):
        parse_pick("last", "head")


def test_bad_requests_are_one_line_errors(tokenizer):
    loaded = loaded_model(tokenizer)
    with pytest.raises(TuwenError, match="--source fusion"):
        attention_maps(loaded, PIXELS, question="what colour?")
    with pytest.raises(TuwenError, match="source 'encoder'"):
        attention_maps(loaded, PIXELS, text="a", source="encoder")
    with pytest.raises(TuwenError, match="empty"):
        attention_maps(loaded, PIXELS, text="   ")
    loaded.vocab = None
    with pytest.raises(TuwenError, match="without VQA"):
        attention_maps(loaded, PIXELS, question="what colour?", source="fusion")
    torch.manual_seed(0)
    spec = tiny_spec(image_encoder={"type": "small_cnn", "patch_size": 8, "layers": 1})
    spec.vocab_size = len(tokenizer)
    cnn = SavedModel(build_model(spec).eval(), tokenizer, None, None, loaded.transform,
                     TextNormalizer())
    assert attention_maps(cnn, PIXELS, text="a red circle").maps.shape == (3, *GRID)
    with pytest.raises(TuwenError, match="--rollout needs a ViT.*SmallCNN returns no"):
        attention_maps(cnn, PIXELS, text="a red circle", rollout=True)


def test_upsample_keeps_the_peak_cell():
    maps = np.zeros((1, *GRID), dtype=np.float32)
    maps[0][TARGET_CELL] = 1.0
    up = upsample(maps, (32, 32))
    assert up.shape == (1, 32, 32)
    row, col = np.unravel_index(up[0].argmax(), (32, 32))
    assert (row // 8, col // 8) == TARGET_CELL


def save(loaded: SavedModel, directory):
    loaded.model.save_pretrained(directory)
    save_tokenizer(loaded.tokenizer, directory)
    loaded.vocab.save(directory / VOCAB_FILE)


def test_cli_writes_the_grid_png(tokenizer, tmp_path, capsys):
    from PIL import Image

    from tuwen.apps.cli import main

    save(loaded_model(tokenizer), tmp_path / "model")
    image = tmp_path / "img.png"
    Image.fromarray(np.full((40, 48, 3), 200, dtype=np.uint8)).save(image)
    out = tmp_path / "att.png"
    assert main(["attention", str(tmp_path / "model"), str(image), "--text", "a red circle",
                 "--out", str(out), "--layer", "0", "--head", "mean"]) == 0
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width > 300
    printed = capsys.readouterr().out
    assert "a red circle" in printed and str(out) in printed
    assert main(["attention", str(tmp_path / "model"), str(image), "--question", "how many?",
                 "--source", "fusion", "--rollout", "--out", str(out)]) == 0
    assert main(["attention", str(tmp_path / "model"), str(image), "--layer", "7",
                 "--out", str(out)]) == 2
    assert "layer 7 does not exist" in capsys.readouterr().err
    assert main(["attention", str(tmp_path / "model"), str(tmp_path / "none.png"),
                 "--out", str(out)]) == 2


def test_rollout_through_a_hugging_face_vit(tokenizer, tmp_path):
    """An HF ViT tower (CLS first): rollout maps = the decoder maps carried through the
    eager self-attention of the backbone, patch block only; an HF CNN has no rollout."""
    from hf_tiny import hf_spec, save_image_model

    vit = save_image_model("vit", tmp_path / "vit")
    spec = hf_spec(image={"type": "hf", "name_or_path": str(vit)}, vocab_size=len(tokenizer))
    loaded = SavedModel(build_model(spec).eval(), tokenizer, None, None,
                        ImageTransform(32, (0.5,) * 3, (0.5,) * 3), TextNormalizer())
    plain = attention_maps(loaded, PIXELS, text="a red circle")
    rolled = attention_maps(loaded, PIXELS, text="a red circle", rollout=True)
    with torch.no_grad():
        feats = loaded.model.image_encoder(PIXELS, output_attentions=True)
    assert feats.attentions[0].shape[-1] == 1 + 16 and rolled.grid == GRID
    expected = plain.maps.reshape(3, 16) @ attention_rollout(feats.attentions)[1:, 1:].numpy()
    assert np.allclose(rolled.maps.reshape(3, 16), expected, atol=1e-5)
    assert not np.allclose(rolled.maps, plain.maps, atol=1e-3)
    resnet = save_image_model("resnet", tmp_path / "resnet")
    spec = hf_spec(image={"type": "hf", "name_or_path": str(resnet)}, vocab_size=len(tokenizer))
    cnn = SavedModel(build_model(spec).eval(), tokenizer, None, None, loaded.transform,
                     TextNormalizer())
    with pytest.raises(TuwenError, match="--rollout needs a ViT"):
        attention_maps(cnn, PIXELS, text="a red circle", rollout=True)


def test_the_answer_beside_the_maps_is_the_vqa_prediction_with_readout_queries(tokenizer):
    loaded = loaded_model(tokenizer, vqa={"readout_queries": 2})
    answered = attention_maps(loaded, PIXELS, question="what colour is the square?",
                              source="fusion")
    ids, mask = question_ids(loaded)
    expected = vqa.predict_step(loaded.model, PIXELS, ids, mask)[0]
    assert answered.answer == loaded.vocab.answer(int(expected))
