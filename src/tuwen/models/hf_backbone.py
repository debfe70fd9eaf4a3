"""Hugging Face models as tower bodies: find the architecture, load or build, adapt.

A tower comes from a hub name or folder (pretrained weights), from an ``hf_config`` dict
(random weights), or from the HF config saved in a tuwen model's ``config.json`` (random
weights that ``from_pretrained`` then overwrites) — the last needs no network, whatever the
tower was first loaded from.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from collections.abc import Iterator
from typing import Any

from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from tuwen.config import HFTowerConfig, LoraConfig
from tuwen.errors import ConfigError, TuwenWarning

# The key of each modality's sub-config inside two-tower configs (clip, siglip, ...)
SUB_CONFIG = {"image": "vision_config", "text": "text_config"}


def _first_line(err: Exception) -> str:
    return (str(err).strip() or type(err).__name__).splitlines()[0]


def hf_tower(cfg: HFTowerConfig, modality: str, where: str, saved: dict[str, Any] | None,
             defaults: dict[str, Any]) -> tuple[nn.Module, PretrainedConfig]:
    """The tower's body, ready to train, and its resolved HF config (to save).

    ``saved``: the config a saved tuwen model recorded; the body is then rebuilt from it
    with random weights, offline, for ``from_pretrained`` to overwrite.
    """
    if saved is not None:
        config = config_from_dict(saved, f"{where} (saved hf config)")
    else:
        config = hf_config_for(cfg, modality, where, defaults)
    backbone = build_backbone(cfg, config, pretrained=saved is None, where=where)
    return adapt(backbone, cfg, where), config


def hf_config_for(cfg: HFTowerConfig, modality: str, where: str,
                  defaults: dict[str, Any]) -> PretrainedConfig:
    """The architecture a tower config names. ``defaults`` (sizes the rest of the model
    fixes, e.g. the tokenizer's vocab_size) fill what an ``hf_config`` leaves out."""
    if cfg.hf_config is not None:
        config = config_from_dict(cfg.hf_config, f"{where}.hf_config")
    else:
        try:
            config = AutoConfig.from_pretrained(cfg.name_or_path)
        except (OSError, ValueError) as err:
            raise ConfigError(f"{where}.name_or_path: {cfg.name_or_path!r} could not be found "
                              f"locally or online ({_first_line(err)})") from None
    sub = SUB_CONFIG[modality]
    if sub in getattr(type(config), "sub_configs", {}):  # clip -> its vision or text tower
        config = getattr(config, sub)
    check_modality(config, modality, where)
    if getattr(cfg, "layers", None) is not None:
        config = first_blocks(config, cfg.layers, where)
    if cfg.hf_config is not None:
        for key, value in defaults.items():
            if key not in cfg.hf_config and hasattr(config, key):
                setattr(config, key, value)
    return config


def first_blocks(config: PretrainedConfig, layers: int, where: str) -> PretrainedConfig:
    """The same architecture with only its first ``layers`` blocks; loading a checkpoint
    into it leaves the later blocks' weights unused. Rebuilt from its dict, so backbone
    configs (DINOv2's) recount the stages they name."""
    total = getattr(config, "num_hidden_layers", None)
    if not isinstance(total, int):
        raise ConfigError(f"{where}.layers: {config.model_type!r} has no stack of Transformer "
                          "blocks to keep the first of (a CNN?); leave it null")
    if layers > total:
        raise ConfigError(f"{where}.layers: {layers} is more than the {total} blocks of "
                          f"{config.model_type!r}")
    raw = {k: v for k, v in config.to_dict().items()
           if k not in ("out_features", "out_indices", "stage_names")}
    return config_from_dict({**raw, "num_hidden_layers": layers}, f"{where}.layers")


def config_from_dict(raw: dict[str, Any], where: str) -> PretrainedConfig:
    """An HF config from ``{model_type: ..., **fields}`` (also what ``to_dict()`` wrote)."""
    raw = dict(raw)
    model_type = raw.pop("model_type", None)
    try:
        return AutoConfig.for_model(model_type, **raw)
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{where}: unknown or invalid model_type {model_type!r} "
                          f"({_first_line(err)[:120]})") from None


EXPECTED = {"image": ("vision", "vit, resnet, clip_vision_model, siglip_vision_model, ..."),
            "text": ("text", "bert and its family")}


def check_modality(config: PretrainedConfig, modality: str, where: str) -> None:
    """A vision model given as text encoder (or the reverse) is caught before any forward."""
    is_image, is_text = hasattr(config, "num_channels"), hasattr(config, "vocab_size")
    if is_image if modality == "image" else is_text:
        return
    kind = "vision" if is_image else "text" if is_text else "neither a vision nor a text"
    want, examples = EXPECTED[modality]
    raise ConfigError(f"{where}: {config.model_type!r} (hidden size {hidden_size_of(config)}) "
                      f"is a {kind} model; the {modality} encoder needs a {want} model "
                      f"({examples})")


def hidden_size_of(config: PretrainedConfig) -> int | None:
    """Width of the features the model says it returns (a CNN's last stage, else
    hidden_size); None when its config names neither (MobileNetV2, EfficientNet: image
    towers measure theirs, hf_image.probe_backbone)."""
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    size = getattr(config, "hidden_size", None)
    return None if size is None else int(size)


def build_backbone(cfg: HFTowerConfig, config: PretrainedConfig, pretrained: bool,
                   where: str) -> PreTrainedModel:
    """Weights from ``cfg.name_or_path`` when ``pretrained``, else random from ``config``."""
    try:
        model_class = MODEL_MAPPING[type(config)]
    except KeyError:
        raise ConfigError(f"{where}: transformers has no base model for "
                          f"{config.model_type!r}") from None
    # ViT/BERT poolers are randomly initialised in most checkpoints; the towers pool
    # themselves (see hf_image/hf_text), so the layer is left out rather than left unused.
    kwargs = ({"add_pooling_layer": False}
              if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters else {})
    if pretrained and cfg.name_or_path is not None:
        try:
            with quiet_load_report():
                model, info = model_class.from_pretrained(
                    cfg.name_or_path, config=config, output_loading_info=True, **kwargs)
        except (OSError, ValueError) as err:
            raise ConfigError(f"{where}.name_or_path: {cfg.name_or_path!r} could not be "
                              f"loaded ({_first_line(err)})") from None
        warn_about_weights(info, where, cfg.name_or_path)
    else:
        model = model_class(config, **kwargs)
    return model.float()  # checkpoints may be stored in half precision; autocast does the rest


@contextlib.contextmanager
def quiet_load_report() -> Iterator[None]:
    """transformers' table of unused and missing weights off: ``warn_about_weights`` says
    what matters in one line. A quiet loading logger makes transformers check the model's
    tensor-parallel plan, which lists every layer as "not sharded" on one device: that
    logger is quieted too."""
    loggers = [logging.getLogger(name) for name in
               ("transformers.modeling_utils", "transformers.distributed.tensor_parallel")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def warn_about_weights(info: dict, where: str, name: str) -> None:
    """One warning when the model has weights the checkpoint lacks (they start random).
    Checkpoint weights left unused are not news: the pooler tuwen leaves out, the other tower
    of a CLIP or SigLIP checkpoint."""
    keys = sorted(info.get("missing_keys", []))
    if keys:
        shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
        warnings.warn(f"{where}: {len(keys)} weights are not in the checkpoint and start "
                      f"random ({name}: {shown})", TuwenWarning, stacklevel=3)


def adapt(model: PreTrainedModel, cfg: HFTowerConfig, where: str) -> nn.Module:
    """Gradient checkpointing and LoRA adapters, as the tower config asks."""
    if cfg.gradient_checkpointing:
        if not model.supports_gradient_checkpointing:
            raise ConfigError(f"{where}.gradient_checkpointing: {model.config.model_type!r} "
                              "models do not support it in transformers")
        # non-reentrant: also right when the inputs need no gradient (frozen embeddings, LoRA)
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable({"use_reentrant": False})
    if cfg.lora is not None:
        return add_lora(model, cfg.lora, where)
    return model


def add_lora(model: PreTrainedModel, lora: LoraConfig, where: str) -> nn.Module:
    from peft import LoraConfig as PeftLoraConfig  # peft is slow to import; only when used
    from peft import get_peft_model

    config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=lora.target_modules)
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # e.g. target_modules that name no module of this model
        raise ConfigError(f"{where}.lora: {_first_line(err)}") from None
