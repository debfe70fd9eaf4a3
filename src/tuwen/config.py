"""Typed, nested run configuration: YAML in, validated objects out.

Every section forbids unknown keys, so a typo is an error that names the key path
instead of a silently ignored setting. ``--set a.b.c=value`` overrides are applied to
the raw YAML tree before validation, so they go through exactly the same checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuwen.errors import ConfigError

TASKS = ("caption", "itc", "itm", "vqa")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------- data

class CaptionSource(Section):
    format: Literal["karpathy"] = "karpathy"
    path: str = "captions.json"
    image_root: str | None = None  # default: the folder of `path`


class VQASource(Section):
    format: Literal["vqav2"] = "vqav2"
    questions: str = "vqa_questions_{split}.json"
    annotations: str = "vqa_annotations_{split}.json"
    image_pattern: str = "images/{image_id:06d}.png"
    image_root: str | None = None


class TokenizerConfig(Section):
    type: Literal["wordpiece"] = "wordpiece"
    vocab_size: int = Field(1000, ge=16)


class DataConfig(Section):
    root: str = "data/shapes"
    captions: CaptionSource | None = CaptionSource()
    vqa: VQASource | None = VQASource()
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = Field(64, ge=8)
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    max_text_length: int = Field(40, ge=4)
    captions_per_image: int = Field(4, ge=1)   # drawn per image per step (ITC uses all)
    questions_per_image: int = Field(3, ge=1)  # drawn per image per step
    spatial_negatives: bool = True  # ITM also rejects captions with left/right etc. swapped
    answer_vocab_size: int = Field(100, ge=2)
    tokenizer: TokenizerConfig = TokenizerConfig()
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    num_workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _has_a_source(self) -> DataConfig:
        if self.captions is None and self.vqa is None:
            raise ValueError("data needs at least one of data.captions or data.vqa")
        return self


# ---------------------------------------------------------------- model

class ImageEncoderConfig(Section):
    type: Literal["small_vit", "small_cnn"] = "small_vit"
    patch_size: int = Field(16, ge=1)
    layers: int = Field(2, ge=0)
    heads: int = Field(4, ge=1)


class TowerConfig(Section):
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)


class TextEncoderConfig(TowerConfig):
    type: Literal["transformer"] = "transformer"


class FusionConfig(TowerConfig):
    type: Literal["cross_attention"] = "cross_attention"


class DecoderConfig(TowerConfig):
    type: Literal["transformer"] = "transformer"


class ModelConfig(Section):
    hidden_size: int = Field(128, ge=8)
    embed_dim: int = Field(128, ge=8)  # ITC projection
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    image_encoder: ImageEncoderConfig = ImageEncoderConfig()
    text_encoder: TextEncoderConfig = TextEncoderConfig()
    fusion: FusionConfig = FusionConfig()
    decoder: DecoderConfig = DecoderConfig()

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelConfig:
        for name in ("image_encoder", "text_encoder", "fusion", "decoder"):
            heads = getattr(self, name).heads
            if self.hidden_size % heads:
                raise ValueError(f"model.{name}.heads={heads} must divide "
                                 f"model.hidden_size={self.hidden_size}")
        return self


# ---------------------------------------------------------------- train / eval

class TaskWeights(Section):
    caption: float = Field(1.0, ge=0)
    itc: float = Field(1.0, ge=0)
    itm: float = Field(1.0, ge=0)
    vqa: float = Field(1.0, ge=0)

    def active(self) -> dict[str, float]:
        return {name: w for name in TASKS if (w := getattr(self, name)) > 0}


class TrainConfig(Section):
    seed: int = 0
    batch_size: int = Field(64, ge=1)
    max_steps: int = Field(2000, ge=1)
    max_minutes: float | None = Field(None, gt=0)  # wall-clock budget; stops early, saves
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.05, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    log_every: int = Field(20, ge=1)
    save_every: int = Field(500, ge=1)
    keep_last: int = Field(2, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    tasks: TaskWeights = TaskWeights()

    @model_validator(mode="after")
    def _some_task(self) -> TrainConfig:
        if not self.tasks.active():
            raise ValueError("train.tasks: at least one task weight must be > 0")
        return self


class EvalConfig(Section):
    splits: list[str] = ["test"]
    tasks: list[Literal["caption", "retrieval", "vqa"]] = ["caption", "retrieval", "vqa"]
    batch_size: int = Field(128, ge=1)
    decoding: Literal["greedy", "beam"] = "beam"
    beam_size: int = Field(3, ge=1)
    length_penalty: float = 1.0
    max_new_tokens: int = Field(30, ge=1)
    max_images: int | None = Field(None, ge=1)
    itm_rerank_k: int = Field(0, ge=0)  # re-rank each query's ITC top-k with ITM (0: off)


class Config(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _image_fits_patches(self) -> Config:
        size, patch = self.data.image_size, self.model.image_encoder.patch_size
        if patch & (patch - 1):
            raise ValueError(f"model.image_encoder.patch_size={patch} must be a power of two "
                             "(the conv stem halves the resolution per step)")
        if size % patch:
            raise ValueError(f"data.image_size={size} is not a multiple of "
                             f"model.image_encoder.patch_size={patch}")
        return self

    @model_validator(mode="after")
    def _tasks_have_data(self) -> Config:
        weights = self.train.tasks
        if self.data.captions is None and (weights.caption or weights.itc or weights.itm):
            raise ValueError("train.tasks: caption/itc/itm need data.captions "
                             "(set their weights to 0 or add a caption source)")
        if self.data.vqa is None and weights.vqa:
            raise ValueError("train.tasks.vqa needs data.vqa (set its weight to 0 or add one)")
        return self


# ---------------------------------------------------------------- loading

def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.max_steps=200"`` -> (["train", "max_steps"], 200); the value is YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE")
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(path[:i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key")
        else:
            expected = e["msg"]
            if "expected" in e.get("ctx", {}):
                expected = f"expected {e['ctx']['expected']}"
            lines.append(f"{path}: {expected} (got {e.get('input')!r})")
    return f"{source}: invalid config: " + "; ".join(lines)


def config_from_dict(raw: dict, source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``--set``s."""
    raw: Any = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    return config_from_dict(apply_overrides(raw, overrides or []), source)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
