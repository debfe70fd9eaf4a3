"""--dry-run counts the configured LM's tokens per sample by part (image, prompt, text), from
the real image tower's grid and the LM's own tokenizer and chat template, and warns when the
LM reads more than 64 image tokens without model.decoder.reduce."""

from pathlib import Path

import pytest

from hf_tiny import SYSTEM_CHAT_TEMPLATE, save_chat_lm, save_image_model
from tuwen.apps.dry_run import dry_run
from tuwen.apps.lm_tokens import CAPTIONS, lm_tokens
from tuwen.config import load_config
from tuwen.models.chat import chat_format
from tuwen.models.hf_text import hf_tokenizer


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokens_hub")
    return {"vit": save_image_model("vit", root / "vit"),
            "lm": save_chat_lm(root / "lm", SYSTEM_CHAT_TEMPLATE)}


def config_with(hub: dict, *extra: str):
    return load_config(None, [
        "model.hidden_size=32", "model.image_encoder.type=hf",
        f"model.image_encoder.name_or_path={hub['vit']}", "model.decoder.type=hf_causal_lm",
        f"model.decoder.name_or_path={hub['lm']}", "model.vqa.mode=generate", *extra])


def test_the_parts_are_the_towers_grid_and_the_templates_prompt(hub):
    tokens = lm_tokens(config_with(hub))
    assert (tokens.image, tokens.image_tower, tokens.prefix) == (16, 16, True)  # 32 px / 8
    tok = hf_tokenizer(str(hub["lm"]), "model.decoder")
    chat = chat_format(tok, "auto", "none")
    texts = [len(tok(c, add_special_tokens=False)["input_ids"]) + 1 for c in CAPTIONS]
    assert tokens.caption == (len(chat.caption_prompt), sum(texts) / len(texts))
    longer = lm_tokens(config_with(hub, "model.decoder.system_prompt=default"))
    assert longer.caption[0] == len(chat_format(tok, "auto", "default").caption_prompt) > \
        tokens.caption[0]
    assert tokens.answer is not None and not any("WARNING" in line for line in tokens.lines())


def test_more_than_64_image_tokens_without_reduction_warn(hub):
    many = config_with(hub, "model.image_encoder.image_size=80")  # a 10x10 grid
    lines = "\n".join(dry_run(many).lines())
    assert "LM tokens per sample: image 100 (prefix)" in lines
    assert "WARNING: the LM reads 100 image tokens" in lines and "pixel_shuffle" in lines
    shuffled = lm_tokens(config_with(hub, "model.image_encoder.image_size=80",
                                     "model.decoder.reduce.type=pixel_shuffle"))
    assert (shuffled.image, shuffled.image_tower) == (25, 100)
    assert not any("WARNING" in line for line in shuffled.lines())


def test_models_not_on_disk_are_reported_not_guessed(hub):
    offline = load_config(None, ["model.decoder.type=hf_causal_lm",
                                 "model.decoder.name_or_path=nobody/no-such-lm"])
    tokens = lm_tokens(offline)
    assert tokens.caption is None and tokens.image == 16  # the small ViT: (64 px / 16 px)²
    assert "tokenizer is not on disk" in "\n".join(tokens.lines())
    assert lm_tokens(load_config(None, [])) is None  # the small decoder cross-attends
