"""model.decoder.system_prompt: no system turn (the default), the template's own, or a text;
saved with the model and the same in training, generation and attention maps."""

import json
from pathlib import Path

import pytest
import torch

from hf_tiny import (
    CHAT_TEMPLATE,
    DEFAULT_SYSTEM,
    SYSTEM_CHAT_TEMPLATE,
    chat_lm_model,
    chat_tokenizer,
    save_bert,
    save_chat_lm,
    save_image_model,
)
from tiny import task_collator, tiny_spec
from tuwen.config import ModelConfig
from tuwen.config.chat import ChatFormat
from tuwen.data.records import VQAItem
from tuwen.data.vqa_text import left_padded_prompts
from tuwen.errors import ConfigError
from tuwen.evaluation.attention import attention_maps
from tuwen.models.chat import CAPTION_REQUEST, chat_format
from tuwen.models.generation import caption_prompt
from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks.saved_model import SavedModel

USER, AFTER = "<|start|>user\n", "<|eot|><|start|>assistant\n"
BEFORE = {"none": "<s>" + USER,
          "default": f"<s><|start|>system\n{DEFAULT_SYSTEM}<|eot|>" + USER,
          "Describe the shapes.": "<s><|start|>system\nDescribe the shapes.<|eot|>" + USER}
MAX_LENGTH = 24


@pytest.mark.parametrize("system_prompt", list(BEFORE))
def test_the_system_turn_is_none_the_templates_default_or_the_text(system_prompt):
    tok = chat_tokenizer(SYSTEM_CHAT_TEMPLATE)
    chat = chat_format(tok, "auto", system_prompt)
    assert (chat.before, chat.after, chat.system_prompt) == (BEFORE[system_prompt], AFTER,
                                                             system_prompt)
    assert tok.decode(chat.caption_prompt) == BEFORE[system_prompt] + CAPTION_REQUEST + AFTER


def test_none_is_the_default_and_changes_nothing_without_a_default_system_turn():
    assert ModelConfig(decoder={"type": "hf_causal_lm", "name_or_path": "x"}
                       ).decoder.system_prompt == "none"
    tok = chat_tokenizer(CHAT_TEMPLATE)
    assert chat_format(tok, "auto", "none").before == chat_format(tok, "auto",
                                                                  "default").before


def test_a_template_without_a_system_role_keeps_its_prompt_for_none_and_rejects_a_text():
    template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                "{{ raise_exception('no system role') }}{% endif %}"
                "{{ '<|start|>' + m['role'] + '\\n' + m['content'] + '<|eot|>' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|start|>assistant\\n' }}{% endif %}")
    tok = chat_tokenizer(template)
    assert chat_format(tok, "auto", "none").before == USER
    with pytest.raises(ConfigError, match="chat template fails .*no system role"):
        chat_format(tok, "auto", "be brief")


def test_models_saved_before_the_option_read_as_the_templates_default():
    chat = chat_format(chat_tokenizer(SYSTEM_CHAT_TEMPLATE), "auto", "default")
    old = {k: v for k, v in chat.to_dict().items() if k != "system_prompt"}
    assert ChatFormat.from_dict(old) == chat


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("system_hub")
    return {"vit": save_image_model("vit", root / "vit"), "bert": save_bert(root / "bert"),
            "lm": save_chat_lm(root / "lm", SYSTEM_CHAT_TEMPLATE)}


def model_with(hub: dict, system_prompt: str) -> ImageTextModel:
    return chat_lm_model(hub, MAX_LENGTH, system_prompt=system_prompt)


@pytest.mark.parametrize("system_prompt", ["none", "default"])
def test_training_generation_and_attention_maps_prompt_alike_after_save_and_load(
        hub, tmp_path, system_prompt):
    model = model_with(hub, system_prompt).eval()
    model.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["chat"]["system_prompt"] == system_prompt
    assert saved["chat"]["before"] == BEFORE[system_prompt]
    loaded = ImageTextModel.from_pretrained(tmp_path / "model")
    tok, chat = loaded.tokenizer, loaded.spec.chat
    assert chat == model.spec.chat
    request = tok(BEFORE[system_prompt] + CAPTION_REQUEST + AFTER,
                  add_special_tokens=False)["input_ids"]
    # training: the caption's decoder inputs start with the prompt
    item = {"pixel_values": torch.zeros(3, 32, 32), "captions": ["a red circle"],
            "questions": [VQAItem(0, 0, Path("0.png"), "what colour is the circle?",
                                  ("red",) * 10, "red", "what", "other")]}
    batch = task_collator(tok, None, MAX_LENGTH, chat=chat,
                          spec=tiny_spec(vqa={"mode": "generate"}))([item])
    assert batch.part("caption").input_ids[0, : len(request)].tolist() == request
    question = tok(BEFORE[system_prompt] + "what colour is the circle?" + AFTER,
                   add_special_tokens=False)["input_ids"]
    assert batch.part("vqa").answer_input_ids[0, : len(question)].tolist() == question
    # generation and attention maps: the same prompts
    assert caption_prompt(loaded.spec) == request
    prompts, _ = left_padded_prompts(tok, ["what colour is the circle?"], MAX_LENGTH, chat)
    assert prompts[0, -len(question):].tolist() == question
    seen = []
    loaded.decoder.register_forward_pre_hook(lambda _, args: seen.append(args[0][0].tolist()))
    caption = tok("a red circle", add_special_tokens=False)["input_ids"]
    saved = SavedModel(loaded, tok, None, None, None, None)
    maps = attention_maps(saved, torch.zeros(1, 3, 32, 32), text="a red circle",
                          source="decoder")
    assert len(maps.tokens) == len(caption) and seen == [request + caption]


def test_no_system_turn_makes_every_lm_sequence_shorter(hub):
    short, long = model_with(hub, "none").spec.chat, model_with(hub, "default").spec.chat
    assert len(short.caption_prompt) < len(long.caption_prompt)
    assert short.extra_length < long.extra_length
