"""A pairwise-covering set of tower x fusion x language-model combinations: every value of
each axis meets every value of every other axis at least once. Each is built from tiny HF
checkpoints saved to folders and loaded by path, trains one step on all four objectives,
and round-trips through save_pretrained/from_pretrained with identical outputs. A BERT text
tower with a GPT-2 or Llama LM keeps two tokenizers, through training and save/load."""

import itertools
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

from hf_tiny import LMS, WORDS, hf_spec, save_bert, save_image_model, save_lm
from tiny import as_batch, task_collator
from tuwen.data.batch import Batch
from tuwen.data.records import VQAItem
from tuwen.data.vqa_text import left_padded_prompts
from tuwen.models.image_text_model import ImageTextModel, build_model
from tuwen.tasks import captioning, vqa
from tuwen.tasks.table import joint_step

transformers.logging.set_verbosity_error()  # "newly initialised cross-attention" reports

IMAGES = ("vit", "resnet", "clip_vision", "small_cnn")
TEXTS = ("bert", "lstm", "gru")
FUSIONS = ("concat", "weighted_sum", "cross_attention")
DECODERS = ("gpt2_prefix", "gpt2_cross_attention", "llama_prefix", "small_decoder")
AXES = (IMAGES, TEXTS, FUSIONS, DECODERS)
# 16 rows, the least that pairs 4 image towers with 4 decoders (text = i + d, fusion = i + 2d
# modulo 3 makes every other pair of axes meet too; checked below)
COMBINATIONS = [
    ("vit", "bert", "concat", "gpt2_prefix"),
    ("vit", "lstm", "cross_attention", "gpt2_cross_attention"),
    ("vit", "gru", "weighted_sum", "llama_prefix"),
    ("vit", "bert", "concat", "small_decoder"),
    ("resnet", "lstm", "weighted_sum", "gpt2_prefix"),
    ("resnet", "gru", "concat", "gpt2_cross_attention"),
    ("resnet", "bert", "cross_attention", "llama_prefix"),
    ("resnet", "lstm", "weighted_sum", "small_decoder"),
    ("clip_vision", "gru", "cross_attention", "gpt2_prefix"),
    ("clip_vision", "bert", "weighted_sum", "gpt2_cross_attention"),
    ("clip_vision", "lstm", "concat", "llama_prefix"),
    ("clip_vision", "gru", "cross_attention", "small_decoder"),
    ("small_cnn", "bert", "concat", "gpt2_prefix"),
    ("small_cnn", "lstm", "cross_attention", "gpt2_cross_attention"),
    ("small_cnn", "gru", "weighted_sum", "llama_prefix"),
    ("small_cnn", "bert", "concat", "small_decoder"),
]
VOCAB = len(WORDS)  # the tiny BERT's vocabulary; the LMs have more rows
LM_ARCHS = {"gpt2": {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2,
                "n_positions": 64},
       "llama": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                 "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                 "max_position_embeddings": 64}}
WEIGHTS = {"caption": 1.0, "itc": 1.0, "itm": 1.0, "vqa": 1.0}


def test_combinations_cover_every_pair_of_axis_values():
    assert all(len(row) == 4 and row[k] in AXES[k] for row in COMBINATIONS for k in range(4))
    for a, b in itertools.combinations(range(4), 2):
        met = {(row[a], row[b]) for row in COMBINATIONS}
        assert met == set(itertools.product(AXES[a], AXES[b])), (a, b)


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict[str, Path]:
    """Every tiny HF checkpoint the combinations load, each in its own folder."""
    root, dirs = tmp_path_factory.mktemp("hub"), {}
    for kind in ("vit", "resnet", "clip_vision_model"):
        dirs[kind] = save_image_model(kind, root / kind)
    dirs["bert"] = save_bert(root / "bert")
    for kind, raw in LM_ARCHS.items():
        raw = dict(raw)
        torch.manual_seed(5)
        config = AutoConfig.for_model(raw.pop("model_type"), vocab_size=64, **raw)
        AutoModelForCausalLM.from_config(config).save_pretrained(root / kind)
        dirs[kind] = root / kind
    return dirs


def sections(row: tuple[str, str, str, str], hub: dict[str, Path]) -> dict:
    image, text, fusion, decoder = row
    hf_name = {"clip_vision": "clip_vision_model"}.get(image, image)
    lm, _, conditioning = decoder.partition("_")
    return {
        "image": ({"type": "small_cnn", "patch_size": 8, "layers": 1} if image == "small_cnn"
                  else {"type": "hf", "name_or_path": str(hub[hf_name])}),
        "text": ({"type": "hf", "name_or_path": str(hub["bert"])} if text == "bert"
                 else {"type": text, "layers": 1}),
        "fusion": ({"type": fusion} if fusion == "weighted_sum"
                   else {"type": fusion, "layers": 1, "heads": 2}),
        "decoder": ({"layers": 1, "heads": 2} if lm == "small"
                    else {"type": "hf_causal_lm", "name_or_path": str(hub[lm]),
                          "conditioning": conditioning}),
    }


def batch(seed: int = 0, b: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, VOCAB, (b, 6), generator=g)
    mask = torch.ones(b, 6, dtype=torch.long)
    mask[1, 4:] = 0
    return {"pixel_values": torch.randn(b, 3, 32, 32, generator=g),
            "caption_image": torch.arange(b), "caption_first": torch.ones(b, dtype=torch.bool),
            "caption_input_ids": ids.masked_fill(mask == 0, 0), "caption_attention_mask": mask,
            "decoder_input_ids": ids, "labels": torch.roll(ids, -1, dims=1),
            "question_image": torch.arange(b), "question_input_ids": ids[:, :4],
            "question_attention_mask": mask[:, :4],
            "vqa_targets": torch.nn.functional.one_hot(ids[:, 0] % 7, 7).float()}


@torch.no_grad()
def outputs(model: ImageTextModel, data: Batch) -> list[torch.Tensor]:
    px, ids, mask = data.pixel_values, data.captions.input_ids, data.captions.attention_mask
    out = model(pixel_values=px, input_ids=ids, attention_mask=mask)
    image = model.encode_image(px)
    logits = model.decode(data.part("caption").input_ids, image.tokens).logits
    return [out.fused, out.pooled, out.image_embeds, out.text_embeds, logits]


@pytest.mark.parametrize("row", COMBINATIONS, ids="-".join)
def test_combination_trains_and_round_trips(row, hub, tmp_path):
    parts = sections(row, hub)
    spec = hf_spec(parts["image"], parts["text"], vocab_size=VOCAB, fusion=parts["fusion"],
                   decoder=parts["decoder"])
    torch.manual_seed(0)
    model = build_model(spec).train()
    data = as_batch(batch())
    total, losses = joint_step(model, data, WEIGHTS)
    assert set(losses) == set(WEIGHTS) and torch.isfinite(total)
    total.backward()
    for part in ("image_encoder", "text_encoder", "fusion", "decoder", "vqa_head"):
        grads = [p.grad for p in getattr(model, part).parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part
    model.eval().save_pretrained(tmp_path / "model")
    loaded = ImageTextModel.from_pretrained(tmp_path / "model")
    for before, after in zip(outputs(model, data), outputs(loaded, data), strict=True):
        assert torch.equal(before, after)


# ---------------------------------------------------------------- two tokenizers
# A pretrained BERT text tower with a pretrained causal LM: each keeps its own tokenizer
# (BERT's WordPiece for ITC/ITM and questions, the LM's BPE for captions, prompts, answers).

TWO_TOKENIZERS = [("vit", "gpt2", "prefix"), ("resnet", "gpt2", "cross_attention"),
                  ("clip_vision_model", "llama", "prefix")]
ANSWERS = ["red", "two", "yes", "blue"]


def two_tokenizer_model(image: str, lm: str, conditioning: str, hub: dict, lm_hub: dict):
    torch.manual_seed(0)
    return ImageTextModel.from_encoders(
        str(hub[image]), str(hub["bert"]), hidden_size=32, embed_dim=16, max_text_length=24,
        fusion={"type": "cross_attention", "layers": 1, "heads": 2}, num_answers=3,
        decoder={"type": "hf_causal_lm", "name_or_path": str(lm_hub[lm]),
                 "conditioning": conditioning},
        vqa={"mode": "generate"})


def collated(model: ImageTextModel) -> dict:
    g = torch.Generator().manual_seed(0)
    captions = ["a red circle", "two green triangles", "a yellow square", "a blue square"]
    items = [{"pixel_values": torch.randn(3, 32, 32, generator=g), "captions": [c],
              "questions": [VQAItem(i, i, Path(f"{i}.png"), "what colour is the circle?",
                                    (a,) * 10, a, "what", "other")]}
             for i, (c, a) in enumerate(zip(captions, ANSWERS))]
    return task_collator(model.tokenizer, None, 24, text_tokenizer=model.text_tokenizer,
                         spec=model.spec)(items)


@torch.no_grad()
def generations(model: ImageTextModel, px: torch.Tensor) -> list[torch.Tensor]:
    ids, mask = left_padded_prompts(model.tokenizer, ["what colour is the circle?"] * 4, 24)
    return [captioning.predict_step(model, px, decoding="greedy", max_new_tokens=6),
            vqa.generate_answers(model, px, ids, mask, max_new_tokens=4)]


@pytest.fixture(scope="module")
def lm_hub(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm_hub")
    return {kind: save_lm(kind, root / kind) for kind in LMS}


@pytest.mark.parametrize("row", TWO_TOKENIZERS, ids="-".join)
def test_bert_and_an_lm_keep_their_tokenizers_train_and_round_trip(row, hub, lm_hub, tmp_path):
    model = two_tokenizer_model(*row, hub, lm_hub).train()
    bert, lm = model.text_tokenizer, model.tokenizer
    assert bert.cls_token == "[CLS]" and lm.eos_token == LMS[row[1]][1]["eos_token"]
    assert model.spec.text_vocab == (len(WORDS), 0) and model.spec.vocab_size == len(lm)
    data = collated(model)
    # the text tower reads BERT ids, the LM its own: [CLS] red ... vs <bos> a red ...
    assert bert.decode(data.captions.input_ids[0], skip_special_tokens=True) == "a red circle"
    assert data.captions.input_ids[0, 0] == bert.cls_token_id
    assert data.part("caption").input_ids[0, 0] == lm.bos_token_id
    labels = data.part("caption").labels[0]
    assert lm.decode(labels[labels >= 0], skip_special_tokens=True) == "a red circle"
    weights = {"caption": 1.0, "itc": 1.0, "itm": 1.0, "vqa": 1.0}
    total, losses = joint_step(model, data, weights)
    assert set(losses) == set(weights) and torch.isfinite(total)
    total.backward()
    for part in ("image_encoder", "text_encoder", "fusion", "decoder"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0
                   for p in getattr(model, part).parameters() if p.requires_grad), part
    model.eval().save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "text_tokenizer" / "tokenizer.json").is_file()
    loaded = ImageTextModel.from_pretrained(tmp_path / "model")
    assert loaded.tokenizer.get_vocab() == lm.get_vocab()
    assert loaded.text_tokenizer.get_vocab() == bert.get_vocab()
    again = collated(loaded)
    assert torch.equal(again.captions.input_ids, data.captions.input_ids)
    assert torch.equal(again.part("caption").input_ids, data.part("caption").input_ids)
    for before, after in zip(outputs(model, data), outputs(loaded, data), strict=True):
        assert torch.equal(before, after)
    for before, after in zip(generations(model, data.pixel_values),
                             generations(loaded, data.pixel_values), strict=True):
        assert torch.equal(before, after)
