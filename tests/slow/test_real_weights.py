"""Real pretrained weights, offline: DINOv2-S or MobileNetV2 + MiniLM + SmolLM2-135M, built
from the folders `make pretrained` writes (TUWEN_PRETRAINED_DIR, default
~/.cache/tuwen-pretrained); skipped with the reason when they are absent."""

import os
from pathlib import Path

import pytest
import torch

from tiny import task_collator
from tuwen.data.records import VQAItem
from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks import captioning
from tuwen.tasks.table import joint_step

ROOT = Path(os.environ.get("TUWEN_PRETRAINED_DIR", "~/.cache/tuwen-pretrained")).expanduser()
FOLDERS = ("dinov2-small", "mobilenet_v2", "minilm", "smollm2-135m")
missing = [f for f in FOLDERS if not (ROOT / f / "config.json").is_file()]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    bool(missing), reason=f"pretrained folders {missing} not in {ROOT} (set "
                          "TUWEN_PRETRAINED_DIR, or make pretrained)")]


@pytest.mark.parametrize("image", ["dinov2-small", "mobilenet_v2"])
def test_real_towers_with_two_tokenizers_train_and_round_trip(image, tmp_path):
    torch.manual_seed(0)
    model = ImageTextModel.from_encoders(
        {"type": "hf", "name_or_path": str(ROOT / image), "image_size": 112, "freeze": True},
        {"type": "hf", "name_or_path": str(ROOT / "minilm"), "freeze": True},
        hidden_size=384, fusion={"type": "cross_attention", "layers": 1, "heads": 6},
        max_text_length=32, vqa={"mode": "generate"},
        decoder={"type": "hf_causal_lm", "name_or_path": str(ROOT / "smollm2-135m"),
                 "reduce": {"type": "avg_pool", "tokens": 4 if image == "dinov2-small" else 1},
                 "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}})
    assert model.spec.image_size == 112 and model.text_tokenizer.cls_token == "[CLS]"
    assert model.tokenizer.eos_token == "<|im_end|>"
    chat = model.spec.chat  # SmolLM2-Instruct's own template (model.decoder.chat_template)
    # model.decoder.system_prompt: none (the default) leaves out SmolLM2's default system turn
    assert chat.after == "<|im_end|>\n<|im_start|>assistant\n"
    assert chat.before == "<|im_start|>user\n" and chat.system_prompt == "none"
    assert model.spec.eos_token_id == chat.end_token_id == model.tokenizer.eos_token_id
    items = [{"pixel_values": torch.randn(3, 112, 112), "captions": [c],
              "questions": [VQAItem(i, i, Path(f"{i}.png"), "what colour is it?", (a,) * 10, a,
                                    "what", "other")]}
             for i, (c, a) in enumerate([("a red circle", "red"), ("a blue square", "blue")])]
    batch = task_collator(model.tokenizer, None, 32, text_tokenizer=model.text_tokenizer,
                          chat=chat, spec=model.spec)(items)
    labels = batch.part("vqa").answer_labels[0]
    assert model.tokenizer.decode(labels[labels >= 0]) == "red<|im_end|>"
    total, losses = joint_step(model.train(), batch, {"caption": 1, "itc": 1, "itm": 1, "vqa": 1})
    assert torch.isfinite(total) and set(losses) == {"caption", "itc", "itm", "vqa"}
    total.backward()
    model.eval().save_pretrained(tmp_path)
    loaded = ImageTextModel.from_pretrained(tmp_path)
    assert loaded.spec.chat == chat
    px = batch.pixel_values
    assert torch.equal(captioning.predict_step(model, px, decoding="greedy", max_new_tokens=4),
                       captioning.predict_step(loaded, px, decoding="greedy", max_new_tokens=4))
