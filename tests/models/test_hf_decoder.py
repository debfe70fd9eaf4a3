"""Hugging Face causal LMs as the decoder: tiny GPT-2 and Llama saved to folders and loaded
by path, conditioned by a projected prefix or by cross-attention, trained on captions and
generative VQA, generating with the LM's KV cache, and saved/loaded offline."""

import shutil
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoConfig

from hf_tiny import LMS, hf_spec, save_bert, save_lm
from tiny import task_collator, tiny_overrides, tiny_spec
from tuwen.apps.cli import main
from tuwen.apps.pipeline import Pipeline
from tuwen.config import ModelConfig, config_from_dict
from tuwen.data.batch import Batch
from tuwen.data.records import VQAItem
from tuwen.data.tokenizer import decode_text
from tuwen.data.vqa_text import left_padded_prompts
from tuwen.errors import ConfigError
from tuwen.evaluation.evaluate import evaluate_run
from tuwen.models.generation import beam_generate, greedy_generate
from tuwen.models.hf_decoder import HFCausalLMDecoder
from tuwen.models.hf_text import hf_tokenizer
from tuwen.models.image_text_model import ImageTextModel, build_model
from tuwen.models.spec import ModelSpec
from tuwen.models.towers import lr_multipliers
from tuwen.tasks import vqa
from tuwen.tasks.table import joint_step
from tuwen.training.assets import choose_tokenizer, choose_tokenizers

transformers.logging.set_verbosity_error()  # "newly initialised cross-attention" reports

CASES = [("gpt2", "prefix"), ("gpt2", "cross_attention"), ("llama", "prefix")]


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory) -> dict[str, Path]:
    """Each tiny LM saved with its tokenizer as a hub checkpoint is: a folder."""
    return {kind: save_lm(kind, tmp_path_factory.mktemp(kind)) for kind in LMS}


def spec_for(lm_dir: Path, conditioning: str, tok, mode: str = "generate") -> ModelSpec:
    model = ModelConfig(hidden_size=32, embed_dim=16,
                        image_encoder={"type": "small_vit", "patch_size": 8, "layers": 1,
                                       "heads": 2},
                        text_encoder={"layers": 1, "heads": 2}, fusion={"layers": 1, "heads": 2},
                        decoder={"type": "hf_causal_lm", "name_or_path": str(lm_dir),
                                 "conditioning": conditioning},
                        vqa={"mode": mode})
    return ModelSpec(model=model, vocab_size=len(tok), num_answers=3, image_size=32,
                     max_text_length=24, pad_token_id=tok.pad_token_id,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


def fixed_batch(tok) -> Batch:
    g = torch.Generator().manual_seed(0)
    captions = [["a red circle"], ["two green triangles"], ["a yellow square"], ["a blue square"]]
    answers = ["red", "two", "yes", "blue"]
    items = [{"pixel_values": torch.randn(3, 32, 32, generator=g), "captions": caps,
              "questions": [VQAItem(i, i, Path(f"{i}.png"), "what colour is the circle?",
                                    (a,) * 10, a, "what", "other")]}
             for i, (caps, a) in enumerate(zip(captions, answers))]
    return task_collator(tok, None, 24, spec=tiny_spec(vqa={"mode": "generate"}))(items)


@pytest.fixture(scope="module", params=CASES, ids=lambda c: "-".join(c))
def trained(request, lm_dirs, tmp_path_factory):
    """A model with the LM loaded by path, trained a few steps on captions + generative VQA."""
    kind, conditioning = request.param
    tok = hf_tokenizer(str(lm_dirs[kind]), "model.decoder")
    torch.manual_seed(0)
    model = build_model(spec_for(lm_dirs[kind], conditioning, tok)).train()
    batch = fixed_batch(tok)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    weights = {"caption": 1.0, "vqa": 1.0}
    losses = []
    # long enough that learning the answers does not hang on the seed
    # (docs/experiments/2026-12-07-llm-step.md#one-lm-forward-for-caption-and-vqa)
    for _ in range(60):
        total, _ = joint_step(model, batch, weights)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    return model.eval(), tok, batch, losses


def test_the_lms_tokenizer_is_the_models_and_gets_a_pad_token(lm_dirs):
    for kind in LMS:
        raw = {"model": {"decoder": {"type": "hf_causal_lm", "name_or_path": str(lm_dirs[kind])}}}
        tok = choose_tokenizer(config_from_dict(raw), train=None)
        assert tok.pad_token is not None and tok.pad_token_id == tok.eos_token_id
        assert len(tok) == AutoConfig.from_pretrained(lm_dirs[kind]).vocab_size


def test_a_text_tower_and_an_lm_with_different_tokenizers_keep_both(lm_dirs, tmp_path):
    bert = save_bert(tmp_path / "bert")
    raw = {"model": {"text_encoder": {"type": "hf", "name_or_path": str(bert)},
                     "decoder": {"type": "hf_causal_lm", "name_or_path": str(lm_dirs["gpt2"])}}}
    lm, text = choose_tokenizers(config_from_dict(raw), train=None)
    assert lm.eos_token == "<|endoftext|>" and len(lm) == len(hf_tokenizer(
        str(lm_dirs["gpt2"]), "model.decoder"))
    assert text.cls_token == "[CLS]" and text.bos_token == "[CLS]"
    same = {"model": {"decoder": raw["model"]["decoder"]}}
    assert choose_tokenizers(config_from_dict(same), train=None)[1] is None


def test_training_lowers_the_loss(trained):
    _, _, _, losses = trained
    assert losses[-1] < 0.5 * losses[0], losses


def test_loss_covers_only_text_tokens(trained):
    model, tok, batch, _ = trained
    image = model.encode_image(batch.pixel_values).tokens
    ids = batch.part("vqa").answer_input_ids
    out = model.decode(ids, image[batch.questions.image], output_attentions=True)
    assert out.logits.shape == (*ids.shape, len(tok))  # text positions only, no image prefix
    att = out.cross_attentions[-1]
    assert att.shape == (ids.shape[0], 2, ids.shape[1], 16)  # (B, H, L, 4x4 patches)
    # prefix: the share of each text token's attention that went to the image
    assert (att.sum(-1) <= 1 + 1e-5).all() and (att.sum(-1) > 0).all()
    labels = batch.part("vqa").answer_labels
    prompt = (labels == -100) & (ids != tok.pad_token_id)
    assert prompt.any() and (labels != -100).sum(1).min() >= 2  # answer + EOS


def test_generation_with_the_lm_cache_equals_without(trained):
    model, _, batch, _ = trained
    image = model.encode_image(batch.pixel_values).tokens
    cached = greedy_generate(model, image, 8)
    assert torch.equal(cached, greedy_generate(model, image, 8, use_cache=False))
    beam = beam_generate(model, image, 8, beam_size=3)
    assert torch.equal(beam, beam_generate(model, image, 8, beam_size=3, use_cache=False))


def test_generative_vqa_answers_after_the_question(trained):
    model, tok, batch, _ = trained
    questions = ["what colour is the circle?"] * 4
    ids, mask = left_padded_prompts(tok, questions, 24)
    cached = vqa.generate_answers(model, batch.pixel_values, ids, mask)
    uncached = vqa.generate_answers(model, batch.pixel_values, ids, mask, use_cache=False)
    assert torch.equal(cached, uncached)
    eos = tok.eos_token_id
    texts = [decode_text(tok, row[: row.index(eos)] if eos in row else row)
             for row in cached.tolist()]
    # 60 steps teach the format (an answer word, then EOS) and most of the answers
    assert set(texts) <= {"red", "two", "yes", "blue"}, texts
    assert sum(t == a for t, a in zip(texts, ["red", "two", "yes", "blue"])) >= 2, texts


def test_save_load_round_trip_offline(trained, tmp_path, lm_dirs):
    model, tok, batch, _ = trained
    model.tokenizer = tok
    model.save_pretrained(tmp_path / "saved")
    # the LM's source folder is not needed any more: config.json holds its HF config
    moved = tmp_path / "gone"
    kind = "llama" if "llama" in model.spec.hf_configs["decoder"]["model_type"] else "gpt2"
    shutil.copytree(lm_dirs[kind], moved)
    shutil.rmtree(lm_dirs[kind])
    try:
        loaded = ImageTextModel.from_pretrained(tmp_path / "saved")
    finally:
        shutil.copytree(moved, lm_dirs[kind])
    image = model.encode_image(batch.pixel_values).tokens
    ids = batch.part("caption").input_ids
    assert torch.equal(model.decode(ids, image).logits, loaded.decode(ids, image).logits)
    assert torch.equal(greedy_generate(model, image, 6), greedy_generate(loaded, image, 6))
    assert isinstance(loaded.decoder, HFCausalLMDecoder)
    assert loaded.tokenizer.pad_token_id == tok.pad_token_id


def test_bad_decoder_configs_are_clear_errors(lm_dirs):
    tok = hf_tokenizer(str(lm_dirs["llama"]), "model.decoder")
    with pytest.raises(ConfigError, match=r"model\.decoder\.conditioning: 'llama' has no "
                                          r"cross-attention"):
        build_model(spec_for(lm_dirs["llama"], "cross_attention", tok))
    spec = spec_for(lm_dirs["llama"], "prefix", tok)
    vit = {"type": "hf_causal_lm", "hf_config": {"model_type": "vit", "hidden_size": 32}}
    with pytest.raises(ConfigError, match="'vit' is not a causal language model"):
        build_model(ModelSpec(**{**spec.__dict__, "model": ModelConfig(
            **{**spec.model.model_dump(), "decoder": vit})}))
    missing = {"type": "hf_causal_lm", "name_or_path": "/nonexistent/tiny-gpt2"}
    with pytest.raises(ConfigError, match="could not be found locally or online"):
        build_model(ModelSpec(**{**spec.__dict__, "model": ModelConfig(
            **{**spec.model.model_dump(), "decoder": missing})}))
    small = {"type": "hf_causal_lm", "hf_config": {**LMS["gpt2"][0], "vocab_size": 10}}
    with pytest.raises(ConfigError, match="10 token embeddings, fewer than"):
        build_model(ModelSpec(**{**spec.__dict__, "model": ModelConfig(
            **{**spec.model.model_dump(), "decoder": small})}))
    with pytest.raises(ConfigError, match=r"model\.decoder\.projector"):
        config_from_dict({"model": {"decoder": {"type": "hf_causal_lm", "projector": "conv",
                                                "name_or_path": "x"}}})
    with pytest.raises(ConfigError, match=r"model\.decoder\.conditioning: unknown key for "
                                          r"type 'transformer'"):
        config_from_dict({"model": {"decoder": {"conditioning": "prefix"}}})


def test_cli_trains_and_evaluates_an_lm_decoder_with_generative_vqa(tiny_shapes, tmp_path):
    out = tmp_path / "run"
    lm = ("{type: hf_causal_lm, hf_config: {model_type: gpt2, n_layer: 1, n_embd: 32, "
          "n_head: 2, n_positions: 64}, conditioning: prefix, projector: linear}")
    sets = [*tiny_overrides(tiny_shapes, max_steps=3, save_every=3), f"model.decoder={lm}",
            "model.vqa.mode=generate", "eval.max_images=4"]
    assert main(["train", "configs/shapes.yaml", "--out", str(out),
                 *[arg for s in sets for arg in ("--set", s)]]) == 0
    metrics = evaluate_run(out, "test", tasks=["vqa"], show_progress=False)  # answers generated
    assert metrics["n_questions"] > 0 and 0 <= metrics["vqa"]["accuracy"] <= 100
    pipe = Pipeline.from_pretrained(out / "model")
    assert isinstance(pipe.model.decoder, HFCausalLMDecoder)
    assert pipe.model.spec.model.vqa.mode == "generate"
    image = next((tiny_shapes / "images").iterdir())
    caption = pipe.caption([image], decoding="greedy")[0]
    answer = pipe.answer([image], ["what?"])[0].text
    assert isinstance(caption, str) and isinstance(answer, str)


def test_freeze_and_lr_multiplier_act_on_the_lm_not_the_projector(lm_dirs):
    tok = hf_tokenizer(str(lm_dirs["gpt2"]), "model.decoder")
    spec = spec_for(lm_dirs["gpt2"], "prefix", tok)
    decoder = {**spec.model.decoder.model_dump(), "freeze": True, "lr_multiplier": 0.1}
    model = build_model(ModelSpec(**{**spec.__dict__, "model": ModelConfig(
        **{**spec.model.model_dump(), "decoder": decoder})})).train()
    assert not any(p.requires_grad for p in model.decoder.lm.parameters())
    assert all(p.requires_grad for p in model.decoder.projector.parameters())
    assert not model.decoder.lm.training  # dropout off in a frozen body
    assert lr_multipliers(model, model.spec.model) == {"decoder.lm.": 0.1}


def test_lora_adapters_on_the_lm_train_generate_and_round_trip(tmp_path):
    gpt2 = {**LMS["gpt2"][0], "n_layer": 1}
    torch.manual_seed(0)
    model = build_model(hf_spec(decoder={"type": "hf_causal_lm", "hf_config": gpt2,
                                         "lora": {"r": 4}}))
    trainable = {n for n, p in model.decoder.lm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    image, ids = torch.randn(2, 16, 32), torch.randint(5, 50, (2, 6))
    model.eval()
    assert torch.equal(greedy_generate(model, image, 6),
                       greedy_generate(model, image, 6, use_cache=False))
    model.save_pretrained(tmp_path)
    loaded = ImageTextModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.decode(ids, image).logits, model.decode(ids, image).logits)
