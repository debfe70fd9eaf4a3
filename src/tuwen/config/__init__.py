"""Typed, nested run configuration: YAML in, validated objects out.

One module per section: :mod:`~tuwen.config.sources` (``data.sources``),
:mod:`~tuwen.config.data`, :mod:`~tuwen.config.model`, :mod:`~tuwen.config.train`,
:mod:`~tuwen.config.eval`; :mod:`~tuwen.config.root` joins them into ``Config`` and
:mod:`~tuwen.config.load` reads YAML and ``--set`` overrides, which
:mod:`~tuwen.config.paths` applies (switching a typed section's type). Every section
forbids unknown keys, so a typo is an error that names the key path instead of a silently
ignored setting.
``python -m tuwen.config.reference`` writes docs/config-reference.md from the models.
"""

from tuwen.config.base import Section, typed_union
from tuwen.config.data import (
    AugmentConfig,
    ColorJitterConfig,
    DataConfig,
    RandomResizedCropConfig,
    TextConfig,
    TokenizerConfig,
)
from tuwen.config.eval import EvalConfig
from tuwen.config.load import (
    apply_overrides,
    config_from_dict,
    load_config,
    packaged_config,
    parse_override,
    save_config,
)
from tuwen.config.model import (
    DECODERS,
    FUSIONS,
    IMAGE_ENCODERS,
    REDUCTIONS,
    TEXT_ENCODERS,
    AvgPoolConfig,
    ConcatFusionConfig,
    CrossAttentionFusionConfig,
    DecoderConfig,
    FusionConfig,
    GRUTextEncoderConfig,
    HFDecoderConfig,
    HFImageEncoderConfig,
    HFTextEncoderConfig,
    HFTowerConfig,
    ImageEncoderConfig,
    LoraConfig,
    LSTMTextEncoderConfig,
    ModelConfig,
    NoReductionConfig,
    PixelShuffleConfig,
    SmallCNNConfig,
    SmallViTConfig,
    TextEncoderConfig,
    TokenReductionConfig,
    TowerConfig,
    TowerTrainingConfig,
    TransformerDecoderConfig,
    TransformerTextEncoderConfig,
    VQAModeConfig,
    WeightedSumFusionConfig,
)
from tuwen.config.root import Config
from tuwen.config.sources import (
    COCO_IMAGE_PATTERN,
    SOURCE_LABELS,
    SOURCES,
    CocoSource,
    CsvSource,
    DataSource,
    HFSource,
    ImageFolderSource,
    JsonlSource,
    KarpathySource,
    LlavaSource,
    SourceConfig,
    VQAv2Source,
    WebDatasetSource,
    shapes_sources,
)
from tuwen.config.stages import StageConfig
from tuwen.config.tasks import NoOptions, TaskDeclaration
from tuwen.config.train import TaskWeightPoint, TrainConfig

__all__ = [
    "COCO_IMAGE_PATTERN", "DECODERS", "FUSIONS", "IMAGE_ENCODERS", "REDUCTIONS", "SOURCES",
    "SOURCE_LABELS", "TEXT_ENCODERS", "AugmentConfig", "AvgPoolConfig",
    "CocoSource", "ColorJitterConfig", "ConcatFusionConfig", "Config",
    "CrossAttentionFusionConfig", "CsvSource", "DataConfig", "DataSource", "DecoderConfig",
    "EvalConfig", "FusionConfig", "GRUTextEncoderConfig", "HFDecoderConfig",
    "HFImageEncoderConfig", "HFSource", "ImageFolderSource", "HFTextEncoderConfig", "HFTowerConfig",
    "ImageEncoderConfig", "JsonlSource", "KarpathySource", "LSTMTextEncoderConfig",
    "LlavaSource", "LoraConfig",
    "ModelConfig", "NoReductionConfig", "PixelShuffleConfig", "RandomResizedCropConfig", "Section",
    "NoOptions", "SmallCNNConfig", "SmallViTConfig", "SourceConfig", "TaskDeclaration",
    "TaskWeightPoint",
    "TextConfig", "TextEncoderConfig", "TokenReductionConfig", "TokenizerConfig", "TowerConfig",
    "StageConfig", "TowerTrainingConfig", "TrainConfig", "TransformerDecoderConfig",
    "TransformerTextEncoderConfig", "VQAModeConfig", "VQAv2Source", "WebDatasetSource",
    "WeightedSumFusionConfig", "apply_overrides", "config_from_dict", "load_config",
    "packaged_config", "parse_override", "save_config", "shapes_sources", "typed_union",
]
