"""Typed, nested run configuration: YAML in, validated objects out.

Every section forbids unknown keys, so a typo is an error that names the key path
instead of a silently ignored setting. ``--set a.b.c=value`` overrides are applied to
the raw YAML tree before validation, so they go through exactly the same checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from tuwen import fsio
from tuwen.errors import ConfigError

TASKS = ("caption", "itc", "itm", "vqa")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# tags of every typed_union -> their key ("type", "format"): left out of error key paths
_TYPE_TAGS: dict[str, str] = {}


def typed_union(*classes: type[Section], default: str | None, key: str = "type") -> Any:
    """A section whose keys depend on its ``type`` (each class has ``type: Literal[tag]``).

    A pydantic discriminated union, except that a missing ``type`` means ``default``; an
    unknown type, or a key of another type, is an error naming ``<section>.type``/the key.
    ``key`` names the discriminating key when it is not ``type`` (data sources: ``format``).
    """
    tags = [get_args(cls.model_fields[key].annotation)[0] for cls in classes]
    _TYPE_TAGS.update(dict.fromkeys(tags, key))

    def tag_of(value: Any) -> str | None:
        return value.get(key, default) if isinstance(value, dict) else getattr(value, key, None)

    members = tuple(Annotated[cls, Tag(tag)] for cls, tag in zip(classes, tags))
    return Annotated[Union[members], Discriminator(  # noqa: UP007 (a runtime tuple of members)
        tag_of, custom_error_type="type_choice", custom_error_message="unknown type",
        custom_error_context={"expected": " or ".join(repr(t) for t in tags), "key": key})]


# ---------------------------------------------------------------- data

SOURCE_LABELS = ("caption", "vqa")  # what a source can label: captions feed caption/itc/itm
COCO_IMAGE_PATTERN = "COCO_{subtype}_{image_id:012d}.jpg"  # VQAv2's images, by COCO file name


class SourceConfig(Section):
    """Keys every data source has; each ``format`` adds its own (README "Data formats").

    Paths are relative to ``data.root``; ``{split}`` in a path becomes the source's split name.
    """

    name: str | None = None  # in reports and errors; default: the format (numbered if repeated)
    weight: float = Field(1.0, gt=0)  # repeat factor: times each image is drawn per epoch
    tasks: list[Literal["caption", "vqa"]] | None = None  # labels to use (default: all it has)
    # run split -> this source's split name(s); a list: serves only these splits; None: all
    splits: list[str] | dict[str, str | list[str]] | None = None
    image_root: str | None = None
    LABELS: ClassVar[frozenset[str]] = frozenset(SOURCE_LABELS)

    def provides(self) -> frozenset[str]:
        """The labels this source may feed (checked against train.tasks at load)."""
        return frozenset(self.tasks) if self.tasks is not None else self.LABELS

    def split_names(self, split: str) -> list[str]:
        """This source's names for the run's ``split``; [] when it does not serve it."""
        if self.splits is None:
            return [split]
        if isinstance(self.splits, list):
            return [split] if split in self.splits else []
        names = self.splits.get(split, [])
        return [names] if isinstance(names, str) else list(names)

    @model_validator(mode="after")
    def _tasks_are_labels(self) -> SourceConfig:
        wrong = sorted(set(self.tasks or ()) - self.LABELS)
        if wrong:
            raise ValueError(f"tasks {wrong}: format {self.format!r} has no such labels "
                             f"(it has {sorted(self.LABELS)})")
        return self


class KarpathySource(SourceConfig):
    format: Literal["karpathy"] = "karpathy"
    path: str = "captions.json"  # images at image_root/filepath/filename; root: path's folder
    LABELS: ClassVar[frozenset[str]] = frozenset({"caption"})


class CocoSource(SourceConfig):
    format: Literal["coco"] = "coco"
    path: str  # e.g. annotations/captions_{split}2017.json, with image_root: "{split}2017"
    LABELS: ClassVar[frozenset[str]] = frozenset({"caption"})


class VQAv2Source(SourceConfig):
    format: Literal["vqav2"] = "vqav2"
    questions: str  # e.g. v2_OpenEnded_mscoco_{split}2014_questions.json
    annotations: str  # e.g. v2_mscoco_{split}2014_annotations.json
    image_pattern: str | None = None  # default COCO_IMAGE_PATTERN under image_root (default root)
    image_map: str | None = None  # or a JSON file {"<image_id>": "relative/path.jpg"}
    LABELS: ClassVar[frozenset[str]] = frozenset({"vqa"})

    @model_validator(mode="after")
    def _one_locator(self) -> VQAv2Source:
        if self.image_pattern is not None and self.image_map is not None:
            raise ValueError("set one of image_pattern and image_map, not both")
        return self


class JsonlSource(SourceConfig):
    format: Literal["jsonl"] = "jsonl"
    path: str  # one object a line: image + caption | captions | question + answers


class CsvSource(SourceConfig):
    format: Literal["csv"] = "csv"
    path: str  # a header row: image + caption | captions | question + answers
    delimiter: str = Field(",", min_length=1, max_length=1)
    list_separator: str = Field("|", min_length=1)  # inside captions and answers cells


class WebDatasetSource(SourceConfig):
    format: Literal["webdataset"] = "webdataset"
    shards: str  # brace pattern, e.g. "cc3m/{00000..00331}.tar"; streamed in training
    shuffle_buffer: int = Field(1000, ge=0)  # samples; 0: shard order only
    caption_key: str = "caption"  # the caption in KEY.json when there is no KEY.txt
    LABELS: ClassVar[frozenset[str]] = frozenset({"caption"})


class HFSource(SourceConfig):
    """A Hugging Face ``datasets`` dataset: ``path`` for load_from_disk, or ``builder`` with
    local ``data_files`` for load_dataset (json, csv, parquet, imagefolder...)."""

    format: Literal["hf"] = "hf"
    path: str | None = None
    builder: str | None = None
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    image_column: str = "image"  # an Image feature or a path string
    text_column: str | None = "caption"  # a string or a list of strings
    question_column: str | None = None
    answers_column: str = "answers"  # strings, or VQAv2-style {"answer": ...} objects
    image_id_column: str | None = None  # default: the image file or content hash

    def provides(self) -> frozenset[str]:
        has = {"caption"} if self.text_column else set()
        has |= {"vqa"} if self.question_column else set()
        return super().provides() & frozenset(has)

    @model_validator(mode="after")
    def _one_origin(self) -> HFSource:
        if (self.path is None) == (self.builder is None):
            raise ValueError("set path (a save_to_disk folder) or builder + data_files")
        if (self.builder is None) != (self.data_files is None):
            raise ValueError("builder and data_files go together (local files only)")
        if not self.text_column and not self.question_column:
            raise ValueError("set text_column and/or question_column")
        return self


DataSource = typed_union(KarpathySource, CocoSource, VQAv2Source, JsonlSource, CsvSource,
                         WebDatasetSource, HFSource, default=None, key="format")


def _shapes_sources() -> list:
    """The built-in shapes layout (``tuwen data shapes``): Karpathy captions + VQAv2."""
    return [KarpathySource(name="captions"),
            VQAv2Source(name="vqa", questions="vqa_questions_{split}.json",
                        annotations="vqa_annotations_{split}.json",
                        image_pattern="images/{image_id:06d}.png")]


class TokenizerConfig(Section):
    type: Literal["wordpiece"] = "wordpiece"
    vocab_size: int = Field(1000, ge=16)


class RandomResizedCropConfig(Section):
    scale: tuple[float, float] = (0.8, 1.0)  # share of the image area kept: mild, so the
    ratio: tuple[float, float] = (0.75, 4 / 3)  # objects a caption names stay in the picture

    @model_validator(mode="after")
    def _ranges(self) -> RandomResizedCropConfig:
        (s_lo, s_hi), (r_lo, r_hi) = self.scale, self.ratio
        if not 0 < s_lo <= s_hi <= 1:
            raise ValueError(f"scale: expected 0 < low <= high <= 1, got {list(self.scale)}")
        if not 0 < r_lo <= r_hi:
            raise ValueError(f"ratio: expected 0 < low <= high, got {list(self.ratio)}")
        return self


class ColorJitterConfig(Section):
    brightness: float = Field(0.2, ge=0)
    contrast: float = Field(0.2, ge=0)
    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.0, ge=0, le=0.5)  # off: captions and answers name colours


class AugmentConfig(Section):
    """Training-only image augmentation (README "Preprocessing"); null turns a part off."""

    random_resized_crop: RandomResizedCropConfig | None = RandomResizedCropConfig()
    color_jitter: ColorJitterConfig | None = ColorJitterConfig()
    hflip: bool = False  # off: captions say "left"/"right", which a mirror image makes false


class TextConfig(Section):
    lowercase: bool = True
    strip_punctuation: bool = False
    stopwords_for_retrieval: bool = False  # drop English function words from ITC/ITM text
    max_words: int | None = Field(None, ge=1)  # cut texts to this many words (BLIP's max_words)


class DataConfig(Section):
    root: str = "data/shapes"
    sources: list[DataSource] = Field(default_factory=_shapes_sources, min_length=1)
    cache_dir: str | None = None  # images held inside HF datasets/tar shards; default root/.cache
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = Field(64, ge=8)
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    max_text_length: int = Field(40, ge=4)
    captions_per_image: int = Field(4, ge=1)   # drawn per image per step (ITC uses all)
    questions_per_image: int = Field(3, ge=1)  # drawn per image per step
    spatial_negatives: bool = False  # ITM also rejects first captions with left/right etc. swapped
    answer_vocab_size: int = Field(100, ge=2)
    tokenizer: TokenizerConfig = TokenizerConfig()
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    num_workers: int = Field(0, ge=0)
    prefetch_factor: int = Field(2, ge=1)  # batches each worker prepares ahead
    persistent_workers: bool = False       # keep workers alive between epochs
    augment: AugmentConfig | None = AugmentConfig()  # training only; null: none
    text: TextConfig = TextConfig()

    @model_validator(mode="after")
    def _name_sources(self) -> DataConfig:
        formats = [s.format for s in self.sources]
        for i, source in enumerate(self.sources):
            if source.name is None:  # object.__setattr__: no re-validation of the section
                name = source.format if formats.count(source.format) == 1 else f"{source.format}{i}"
                object.__setattr__(source, "name", name)
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data.sources: names must be unique, got {names}")
        return self

    def provides(self) -> frozenset[str]:
        return frozenset().union(*(s.provides() for s in self.sources))


# ---------------------------------------------------------------- model

class TowerTrainingConfig(Section):
    """How an image or text tower trains (README "Freezing and adapters"). Both act on the
    tower's body: the whole small tower, or the Hugging Face model of an ``hf`` tower (its
    projection to ``model.hidden_size`` is new and always trains at the base rate)."""

    freeze: bool = False  # no gradients into the body; kept in eval mode (dropout, BatchNorm)
    lr_multiplier: float = Field(1.0, gt=0)  # the body's learning rate is train.lr times this


class LoraConfig(Section):
    """LoRA adapters (``peft``) on a Hugging Face tower; its own weights stay frozen."""

    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"  # module names, or all


class HFTowerConfig(TowerTrainingConfig):
    """A Hugging Face model by hub name or local folder, or one architecture with random
    weights from ``hf_config`` (``{model_type: vit, hidden_size: 64, ...}``)."""

    name_or_path: str | None = None
    hf_config: dict[str, Any] | None = None
    lora: LoraConfig | None = None
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> HFTowerConfig:
        if (self.name_or_path is None) == (self.hf_config is None):
            raise ValueError("set one of name_or_path (hub name or folder) and hf_config")
        if self.hf_config is not None and not isinstance(self.hf_config.get("model_type"), str):
            raise ValueError("hf_config needs a model_type (e.g. vit, resnet, bert)")
        if self.freeze and self.lora is not None:
            raise ValueError("freeze and lora exclude each other (lora already freezes the "
                             "model's own weights and trains the adapters)")
        return self


class SmallViTConfig(TowerTrainingConfig):
    type: Literal["small_vit"] = "small_vit"
    patch_size: int = Field(16, ge=1)
    layers: int = Field(2, ge=0)
    heads: int = Field(4, ge=1)


class SmallCNNConfig(SmallViTConfig):
    type: Literal["small_cnn"] = "small_cnn"


class HFImageEncoderConfig(HFTowerConfig):
    type: Literal["hf"] = "hf"


ImageEncoderConfig = typed_union(SmallViTConfig, SmallCNNConfig, HFImageEncoderConfig,
                                 default="small_vit")


class TowerConfig(Section):
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)


class TransformerTextEncoderConfig(TowerConfig, TowerTrainingConfig):
    type: Literal["transformer"] = "transformer"
    # local self-attention: each token sees tokens within this many positions, [CLS] all
    window: int | None = Field(None, ge=1)


class LSTMTextEncoderConfig(TowerTrainingConfig):
    type: Literal["lstm"] = "lstm"
    layers: int = Field(1, ge=1)
    bidirectional: bool = True


class GRUTextEncoderConfig(LSTMTextEncoderConfig):
    type: Literal["gru"] = "gru"


class HFTextEncoderConfig(HFTowerConfig):
    type: Literal["hf"] = "hf"


TextEncoderConfig = typed_union(TransformerTextEncoderConfig, LSTMTextEncoderConfig,
                                GRUTextEncoderConfig, HFTextEncoderConfig, default="transformer")


class CrossAttentionFusionConfig(TowerConfig):
    type: Literal["cross_attention"] = "cross_attention"
    # local self-attention in every layer but the last (see the text encoder's window)
    window: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _window_needs_a_global_layer(self) -> CrossAttentionFusionConfig:
        if self.window is not None and self.layers < 2:
            raise ValueError(f"model.fusion.window={self.window} needs model.fusion.layers >= 2 "
                             f"(the last layer stays global), got {self.layers}")
        return self


class ConcatFusionConfig(TowerConfig):
    type: Literal["concat"] = "concat"


class WeightedSumFusionConfig(Section):
    type: Literal["weighted_sum"] = "weighted_sum"
    gate: Literal["scalar", "vector"] = "vector"  # one gate per token, or per token and dim


FusionConfig = typed_union(ConcatFusionConfig, WeightedSumFusionConfig,
                           CrossAttentionFusionConfig, default="cross_attention")


class TransformerDecoderConfig(TowerConfig):
    type: Literal["transformer"] = "transformer"


class HFDecoderConfig(HFTowerConfig):
    """A Hugging Face causal LM (name, folder or ``hf_config: {model_type: gpt2, ...}``)
    reading the image as a projected prefix (LLaVA) or through cross-attention (GPT-2)."""

    type: Literal["hf_causal_lm"] = "hf_causal_lm"
    conditioning: Literal["prefix", "cross_attention"] = "prefix"
    projector: Literal["mlp", "linear"] = "mlp"


DecoderConfig = typed_union(TransformerDecoderConfig, HFDecoderConfig, default="transformer")


class VQAModeConfig(Section):
    # classify: a head over the answer vocabulary (VQAv2 standard); generate: the decoder
    # writes the answer after the question (loss on the answer tokens only)
    mode: Literal["classify", "generate"] = "classify"
    # classify: learned queries that attention-pool the fused question tokens for the head,
    # besides the fused [CLS] (0: [CLS] only)
    readout_queries: int = Field(0, ge=0)
    # classify: the fused tokens at the first N places of the question, side by side
    read_positions: int = Field(0, ge=0)


class ModelConfig(Section):
    hidden_size: int = Field(128, ge=8)
    embed_dim: int = Field(128, ge=8)  # ITC projection
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    image_encoder: ImageEncoderConfig = SmallViTConfig()
    text_encoder: TextEncoderConfig = TransformerTextEncoderConfig()
    fusion: FusionConfig = CrossAttentionFusionConfig()
    decoder: DecoderConfig = TransformerDecoderConfig()
    vqa: VQAModeConfig = VQAModeConfig()
    # texts run through the text tower and the fusion in this many groups of similar
    # length, each cut to its longest text: less padding, the same results
    length_buckets: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelConfig:
        for name in ("image_encoder", "text_encoder", "fusion", "decoder"):
            heads = getattr(getattr(self, name), "heads", None)  # weighted_sum has none
            if heads is not None and self.hidden_size % heads:
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


class TaskWeightPoint(Section):
    """One point of ``train.task_schedule``: the weights of the tasks it names at ``step``."""

    step: int = Field(ge=0)
    caption: float | None = Field(None, ge=0)
    itc: float | None = Field(None, ge=0)
    itm: float | None = Field(None, ge=0)
    vqa: float | None = Field(None, ge=0)

    def weights(self) -> dict[str, float]:
        return {name: w for name in TASKS if (w := getattr(self, name)) is not None}


class TrainConfig(Section):
    seed: int = 0
    deterministic: bool = Field(True, description="same seed and thread count, same weights")
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
    # image->text ITC targets weigh each caption by 1 / (training images with that text)
    itc_specific_captions: bool = False
    # --- training at scale (README "Training at scale")
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # after the linear warmup
    task_schedule: list[TaskWeightPoint] = []  # weights interpolated linearly between points
    grad_accumulation: int = Field(1, ge=1)    # micro-batches of batch_size per optimiser step
    gradient_checkpointing: bool = False       # recompute the small towers' blocks in backward
    compile: bool = False                      # torch.compile the model
    distributed: Literal["ddp", "fsdp"] = "ddp"  # when launched on several processes
    best_metric: str | None = None             # validation key, e.g. val_loss or retrieval.t2i_r1
    best_mode: Literal["min", "max"] | None = None  # default: min for *loss*, else max
    eval_every: int | None = Field(None, ge=1)  # validation every N steps (None: never)
    # each task's gradient norm every N steps (one extra backward per task; None: never)
    task_grad_norm_every: int | None = Field(100, ge=1)
    val_max_images: int = Field(256, ge=1)     # validation subset size
    collapse_share: float = Field(0.9, gt=0, le=1)  # warn when one caption is this common
    wandb: bool = False                        # also log to Weights & Biases, offline
    wandb_project: str = "tuwen"
    feature_cache: bool = False                # cache a frozen image encoder's outputs
    feature_cache_dir: str | None = None       # default RUN/feature_cache

    @model_validator(mode="after")
    def _some_task(self) -> TrainConfig:
        if not self.tasks.active() and not any(
                w > 0 for p in self.task_schedule for w in p.weights().values()):
            raise ValueError("train.tasks: at least one task weight must be > 0")
        steps = [p.step for p in self.task_schedule]
        if steps != sorted(set(steps)):
            raise ValueError(f"train.task_schedule: steps must increase, got {steps}")
        return self


class EvalConfig(Section):
    splits: list[str] = ["test"]
    tasks: list[Literal["caption", "retrieval", "vqa"]] = ["caption", "retrieval", "vqa"]
    batch_size: int = Field(128, ge=1)
    decoding: Literal["greedy", "beam", "top_p"] = "beam"
    beam_size: int = Field(3, ge=1)
    length_penalty: float = 1.0
    top_p: float = Field(0.9, gt=0, le=1)        # nucleus mass for decoding=top_p
    temperature: float = Field(1.0, gt=0)        # for decoding=top_p
    seed: int = 0                                # seeds top_p sampling
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
        if not isinstance(self.model.image_encoder, SmallViTConfig):
            return self  # an hf tower's patch size is checked against its own image size
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
        weights, has = self.train.tasks, self.data.provides()
        if "caption" not in has and (weights.caption or weights.itc or weights.itm):
            raise ValueError("train.tasks: caption/itc/itm need a data source with captions "
                             "(set their weights to 0 or add one to data.sources)")
        if "vqa" not in has and weights.vqa:
            raise ValueError("train.tasks.vqa needs a data source with questions "
                             "(set its weight to 0 or add one to data.sources)")
        return self

    @model_validator(mode="after")
    def _specific_captions_are_counted(self) -> Config:
        if self.train.itc_specific_captions and any(
                isinstance(s, WebDatasetSource) for s in self.data.sources):
            raise ValueError("train.itc_specific_captions counts every training caption up "
                             "front, which a streamed webdataset source does not allow")
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
        loc, got = [str(p) for p in e["loc"] if p not in _TYPE_TAGS], e.get("input")
        tag = next((p for p in e["loc"] if p in _TYPE_TAGS), None)
        if e["type"] == "type_choice":  # a typed_union's `type` names no member
            key = e["ctx"]["key"]
            loc, got = [*loc, key], got.get(key) if isinstance(got, dict) else got
        path = ".".join(loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key" + (f" for {_TYPE_TAGS[tag]} {tag!r}" if tag
                                                   else ""))
        else:
            expected = e["msg"]
            if "expected" in e.get("ctx", {}):
                expected = f"expected {e['ctx']['expected']}"
            lines.append(f"{path}: {expected} (got {got!r})")
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
    fsio.write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
