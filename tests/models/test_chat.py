"""Chat templates of instruct LMs (model.decoder.chat_template): a caption or an answer is the
assistant's reply to a user turn, in training and generation alike, the loss on the reply
only, generation stopping at the template's end of turn, the same after save/load."""

from pathlib import Path

import pytest
import torch
from torch import nn

from hf_tiny import (
    LMS,
    bpe_tokenizer,
    chat_lm_model,
    chat_tokenizer,
    save_bert,
    save_chat_lm,
    save_image_model,
)
from tiny import task_collator, tiny_spec
from tuwen.config import load_config
from tuwen.data.records import VQAItem
from tuwen.data.vqa_text import left_padded_prompts
from tuwen.errors import ConfigError
from tuwen.models.chat import CAPTION_REQUEST, chat_format
from tuwen.models.hf_text import with_bos_eos
from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks import captioning, vqa
from tuwen.tasks.table import joint_step
from tuwen.training.assets import prepare_assets

BEFORE, AFTER = "<s><|start|>user\n", "<|eot|><|start|>assistant\n"
CAPTIONS = ["a red circle", "two green triangles"]
QUESTIONS, ANSWERS = ["what colour is the circle?", "is there a square?"], ["red", "yes"]
MAX_LENGTH = 24


def lm_tokenizer():
    """The chat LM's tokenizer as training loads it (EOS pads)."""
    return with_bos_eos(chat_tokenizer(), "model.decoder")


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_the_template_is_split_around_the_users_message():
    tok = chat_tokenizer()
    chat = chat_format(tok, "auto")
    assert (chat.before, chat.after) == (BEFORE, AFTER)
    eot = tok.convert_tokens_to_ids("<|eot|>")
    assert chat.end_token_id == eot != tok.eos_token_id  # the end of turn, not </s>
    assert list(chat.caption_prompt) == ids(tok, BEFORE + CAPTION_REQUEST + AFTER)
    assert chat.extra_length == len(chat.caption_prompt) + 1
    assert chat_format(tok, "none") is None
    assert chat_format(bpe_tokenizer(LMS["llama"][1]), "auto") is None  # no template


def test_a_template_that_cannot_be_split_is_a_one_line_error():
    tok = chat_tokenizer()
    tok.chat_template = "{{ raise_exception('only system turns') }}"
    with pytest.raises(ConfigError, match="chat template fails.*chat_template: none"):
        chat_format(tok, "auto")
    tok.chat_template = ("{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"
                         "{% if add_generation_prompt %}>{% endif %}")
    with pytest.raises(ConfigError, match="does not render a reply"):
        chat_format(tok, "auto")


def items() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"pixel_values": torch.randn(3, 32, 32, generator=g), "captions": [c],
             "questions": [VQAItem(i, i, Path(f"{i}.png"), q, (a,) * 10, a, "what", "other")]}
            for i, (c, q, a) in enumerate(zip(CAPTIONS, QUESTIONS, ANSWERS))]


def test_captions_and_answers_are_the_assistants_reply_with_the_loss_on_it_only():
    tok = lm_tokenizer()
    chat = chat_format(tok, "auto")
    generating = tiny_spec(vqa={"mode": "generate"})
    batch = task_collator(tok, None, MAX_LENGTH, chat=chat, spec=generating)(items())
    eot = chat.end_token_id
    decoder, answers = batch.part("caption"), batch.part("vqa")
    for row, (inputs, labels) in enumerate(zip(decoder.input_ids, decoder.labels)):
        prompt = ids(tok, BEFORE + CAPTION_REQUEST + AFTER)
        caption = ids(tok, BEFORE + CAPTION_REQUEST + AFTER + CAPTIONS[row])[len(prompt):]
        n = len(prompt) + len(caption)
        assert inputs[:n].tolist() == prompt + caption
        assert tok.decode(inputs[:n]) == BEFORE + CAPTION_REQUEST + AFTER + CAPTIONS[row]
        assert labels[:n].tolist() == [-100] * (len(prompt) - 1) + caption + [eot]
        assert (labels[n:] == -100).all() and (inputs[n:] == tok.pad_token_id).all()
    for row, labels in enumerate(answers.answer_labels):
        inputs = answers.answer_input_ids[row]
        text = BEFORE + QUESTIONS[row] + AFTER
        prompt, answer = ids(tok, text), ids(tok, text + ANSWERS[row])[len(ids(tok, text)):]
        assert inputs[: len(prompt) + len(answer)].tolist() == prompt + answer
        assert labels[labels >= 0].tolist() == answer + [eot]
        assert tok.decode(labels[labels >= 0]) == ANSWERS[row] + "<|eot|>"
        assert (labels[: len(prompt) - 1] == -100).all()
    # generation's prompts are training's, left-padded
    prompts, mask = left_padded_prompts(tok, QUESTIONS, MAX_LENGTH, chat)
    first = ids(tok, BEFORE + QUESTIONS[0] + AFTER)
    assert prompts[0, -len(first):].tolist() == first and mask[0, -len(first):].all()


def test_without_a_template_captions_start_at_bos_as_before():
    tok = lm_tokenizer()
    generating = tiny_spec(vqa={"mode": "generate"})
    decoder = task_collator(tok, None, MAX_LENGTH, spec=generating)(items()).part("caption")
    caption = ids(tok, CAPTIONS[0])
    assert decoder.input_ids[0, : len(caption) + 1].tolist() == [tok.bos_token_id, *caption]
    assert decoder.labels[0, : len(caption) + 1].tolist() == [*caption, tok.eos_token_id]


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat_hub")
    return {"vit": save_image_model("vit", root / "vit"), "bert": save_bert(root / "bert"),
            "lm": save_chat_lm(root / "lm")}


def chat_model(hub: dict, template: str = "auto") -> ImageTextModel:
    return chat_lm_model(hub, MAX_LENGTH, chat_template=template)


@torch.no_grad()
def generations(model: ImageTextModel, px: torch.Tensor) -> list[torch.Tensor]:
    prompts, mask = left_padded_prompts(model.tokenizer, QUESTIONS, MAX_LENGTH, model.spec.chat)
    return [captioning.predict_step(model, px, decoding="greedy", max_new_tokens=6),
            captioning.predict_step(model, px, decoding="beam", beam_size=2, max_new_tokens=6),
            vqa.generate_answers(model, px, prompts, mask, max_new_tokens=4)]


def test_an_instruct_lm_trains_on_its_template_and_reloads_identically(hub, tmp_path):
    model = chat_model(hub).train()
    tok, chat = model.tokenizer, model.spec.chat
    assert chat == chat_format(tok, "auto") and model.spec.eos_token_id == chat.end_token_id
    assert model.decoder.max_length == MAX_LENGTH + chat.extra_length
    data = task_collator(tok, None, MAX_LENGTH, chat=chat, text_tokenizer=model.text_tokenizer,
                         spec=model.spec)(items())
    total, losses = joint_step(model, data, {"caption": 1.0, "itc": 1.0, "vqa": 1.0})
    assert torch.isfinite(total) and set(losses) == {"caption", "itc", "vqa"}
    model.eval().save_pretrained(tmp_path / "model")
    loaded = ImageTextModel.from_pretrained(tmp_path / "model")
    assert loaded.spec.chat == chat and loaded.spec.eos_token_id == chat.end_token_id
    assert loaded.decoder.max_length == model.decoder.max_length
    for before, after in zip(generations(model, data.pixel_values),
                             generations(loaded, data.pixel_values), strict=True):
        assert torch.equal(before, after)
    plain = chat_model(hub, "none")
    assert plain.spec.chat is None and plain.spec.eos_token_id == tok.eos_token_id


def favour(model: ImageTextModel, token: int) -> None:
    """An LM head that always prefers ``token``."""
    lm = model.decoder.lm
    head = nn.Linear(lm.lm_head.in_features, lm.lm_head.out_features)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    head.bias.data[token] = 10.0
    lm.lm_head = head


@torch.no_grad()
def test_a_caption_starts_at_the_chat_prompt_and_stops_at_the_end_of_turn(hub):
    model = chat_model(hub).eval()
    tok, chat = model.tokenizer, model.spec.chat
    px = torch.zeros(2, 3, 32, 32)
    image = model.encode_image(px).tokens
    start = torch.tensor([list(chat.caption_prompt)] * 2)
    expected = model.decode(start, image).logits[:, -1].argmax(dim=-1)
    assert torch.equal(captioning.predict_step(model, px, max_new_tokens=1)[:, 0], expected)
    word = ids(tok, "red")[0]
    favour(model, word)  # room for 10 new tokens after the long prompt
    assert captioning.predict_step(model, px, max_new_tokens=10).tolist() == [[word] * 10] * 2
    favour(model, chat.end_token_id)  # the end of turn ends it: one step, an empty caption
    out = captioning.predict_step(model, px, max_new_tokens=10)
    assert out.tolist() == [[chat.end_token_id]] * 2
    assert captioning.generate_captions(model, tok, px) == ["", ""]


def test_training_resolves_the_template_from_the_lms_tokenizer(hub, tiny_shapes, tmp_path):
    base = [f"data.root={tiny_shapes}", "model.decoder.type=hf_causal_lm",
            f"model.decoder.name_or_path={hub['lm']}", "model.hidden_size=32"]
    assets = prepare_assets(load_config(None, base), tmp_path / "auto")
    assert assets.spec.chat == chat_format(assets.tokenizer, "auto")
    assert assets.spec.eos_token_id == assets.spec.chat.end_token_id
    assert (tmp_path / "auto" / "tokenizer_config.json").is_file()
    off = prepare_assets(load_config(None, base + ["model.decoder.chat_template=none"]),
                         tmp_path / "none")
    assert off.spec.chat is None and off.spec.eos_token_id == off.tokenizer.eos_token_id
    with pytest.raises(ConfigError, match="chat_template"):
        load_config(None, base + ["model.decoder.chat_template=always"])
