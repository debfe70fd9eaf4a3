"""Freezing towers, per-tower learning rates, LoRA adapters and gradient checkpointing."""

import pytest
import torch

from hf_tiny import BERT, IMAGE_CONFIGS, hf_spec
from tuwen.config import TrainConfig
from tuwen.errors import ConfigError
from tuwen.models.image_text_model import ImageTextModel, build_model
from tuwen.models.towers import lr_multipliers
from tuwen.tasks.table import joint_step
from tuwen.training.optim import LRSchedule, build_optimizer

TASKS = {"caption": 1.0, "itc": 1.0, "itm": 1.0, "vqa": 1.0}
VIT = {"type": "hf", "hf_config": IMAGE_CONFIGS["vit"]}
TEXT_BERT = {"type": "hf", "hf_config": {**BERT, "vocab_size": 50}}


def train_steps(model: ImageTextModel, batch, steps: int = 3) -> dict[str, torch.Tensor]:
    """State before training; the model is trained ``steps`` steps with tuwen's optimiser."""
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config = TrainConfig(lr=1e-2, warmup_steps=0)
    optimizer = build_optimizer(model, config, lr_multipliers(model, model.spec.model))
    model.train()
    for _ in range(steps):
        total, _ = joint_step(model, batch, TASKS)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    return before


def changed(model: ImageTextModel, before: dict, prefix: str) -> dict[str, bool]:
    return {k: not torch.equal(v, before[k]) for k, v in model.state_dict().items()
            if k.startswith(prefix)}


def test_frozen_small_cnn_keeps_weights_and_batchnorm_statistics(tiny_batch):
    torch.manual_seed(0)
    image = {"type": "small_cnn", "patch_size": 8, "layers": 1, "freeze": True}
    model = build_model(hf_spec(image=image))
    before = train_steps(model, tiny_batch)
    assert not any(changed(model, before, "image_encoder.").values())  # incl. running_mean
    assert all(changed(model, before, "text_encoder.embed").values())
    assert any(changed(model, before, "fusion.").values())
    assert not model.image_encoder.training and model.text_encoder.training


def test_frozen_hf_tower_trains_only_its_projection(tiny_batch):
    torch.manual_seed(0)
    model = build_model(hf_spec(image={**VIT, "freeze": True}))
    before = train_steps(model, tiny_batch)
    assert not any(changed(model, before, "image_encoder.backbone.").values())
    assert all(changed(model, before, "image_encoder.proj.").values())


def test_lora_trains_only_adapters_and_round_trips(tiny_batch, tmp_path):
    torch.manual_seed(0)
    lora = {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}
    model = build_model(hf_spec(text={**TEXT_BERT, "lora": lora}))
    backbone = model.text_encoder.backbone
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * 2  # A and B of query and value in the one layer
    before = train_steps(model, tiny_batch)
    moved = changed(model, before, "text_encoder.backbone.")
    assert {k for k, v in moved.items() if v} == {k for k in moved if "lora_" in k}
    model.eval().save_pretrained(tmp_path)
    loaded = ImageTextModel.from_pretrained(tmp_path)
    px, ids = tiny_batch.pixel_values, tiny_batch.captions.input_ids
    mask = tiny_batch.captions.attention_mask
    with torch.no_grad():
        a, b = model.encode_text(ids, mask), loaded.encode_text(ids, mask)
        assert torch.equal(a.tokens, b.tokens)
        assert torch.equal(model(px[:4], ids, mask).fused, loaded(px[:4], ids, mask).fused)


def test_lora_on_modules_the_model_lacks_is_a_config_error():
    with pytest.raises(ConfigError, match="model.text_encoder.lora: "):
        build_model(hf_spec(text={**TEXT_BERT, "lora": {"target_modules": ["no_such_proj"]}}))


def test_lr_multiplier_groups_get_the_multiplied_lr():
    model = build_model(hf_spec(image={**VIT, "lr_multiplier": 0.1},
                                text={"layers": 1, "heads": 2, "lr_multiplier": 0.5}))
    multipliers = lr_multipliers(model, model.spec.model)
    assert multipliers == {"image_encoder.backbone.": 0.1, "text_encoder.": 0.5}
    config = TrainConfig(lr=2e-3, warmup_steps=0, schedule="constant")
    optimizer = build_optimizer(model, config, multipliers)
    LRSchedule(optimizer, config).step(0, 0.0)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        expected = (2e-4 if name.startswith("image_encoder.backbone.") else
                    1e-3 if name.startswith("text_encoder.") else 2e-3)
        assert lr_of[id(param)] == pytest.approx(expected), name
    assert len(lr_of) == sum(1 for _ in model.parameters())  # every parameter, once


def test_gradient_checkpointing_gives_the_same_gradients(tiny_batch):
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(hf_spec(image={**VIT, "gradient_checkpointing": checkpointing}))
        model.train()
        total, _ = joint_step(model, tiny_batch, {"itc": 1.0})
        total.backward()
        grads.append(torch.cat([p.grad.flatten() for p in
                                model.image_encoder.backbone.parameters()]))
    assert any(getattr(m, "gradient_checkpointing", False)
               for m in model.image_encoder.backbone.modules())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_gradient_checkpointing_on_a_model_without_it_is_a_config_error():
    with pytest.raises(ConfigError, match="gradient_checkpointing: 'resnet' models do not"):
        build_model(hf_spec(image={"type": "hf", "hf_config": IMAGE_CONFIGS["resnet"],
                                   "gradient_checkpointing": True}))
