"""``data``: the sources, image and text preprocessing, batching and loader workers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tuwen.config.base import Section
from tuwen.config.sources import DataSource, shapes_sources


class TokenizerConfig(Section):
    """The tokenizer trained on the training texts when no Hugging Face tower brings one."""

    type: Literal["wordpiece"] = Field("wordpiece", description=(
        "`wordpiece`: a BERT-style WordPiece trained on the training captions, questions and "
        "answers."))
    vocab_size: int = Field(1000, ge=16, description="Vocabulary size, special tokens included.")
    share_text_encoder: bool = Field(False, description=(
        "A decoder trained from scratch beside a named text tower writes in the text "
        "tower's tokenizer (BERT's 30,522 pieces: a wide softmax for the few thousand a "
        "caption set uses) instead of its own WordPiece trained on the training captions. "
        "A named causal LM always keeps its own."))


class RandomResizedCropConfig(Section):
    """A random crop resized to ``data.image_size`` (torchvision's RandomResizedCrop)."""

    # mild: the objects a caption names should stay in the picture
    scale: tuple[float, float] = Field((0.8, 1.0), description=(
        "Range of the share of the image area kept, `[low, high]` with "
        "0 < low <= high <= 1."))
    ratio: tuple[float, float] = Field((0.75, 4 / 3), description=(
        "Range of the crop's aspect ratio (width / height), `[low, high]`."))

    @model_validator(mode="after")
    def _ranges(self) -> RandomResizedCropConfig:
        (s_lo, s_hi), (r_lo, r_hi) = self.scale, self.ratio
        if not 0 < s_lo <= s_hi <= 1:
            raise ValueError(f"scale: expected 0 < low <= high <= 1, got {list(self.scale)}")
        if not 0 < r_lo <= r_hi:
            raise ValueError(f"ratio: expected 0 < low <= high, got {list(self.ratio)}")
        return self


class ColorJitterConfig(Section):
    """Random brightness, contrast, saturation and hue changes (torchvision's ColorJitter)."""

    brightness: float = Field(0.2, ge=0, description=(
        "Brightness factor drawn from `[1 - b, 1 + b]`; 0: unchanged."))
    contrast: float = Field(0.2, ge=0, description=(
        "Contrast factor drawn from `[1 - c, 1 + c]`; 0: unchanged."))
    saturation: float = Field(0.2, ge=0, description=(
        "Saturation factor drawn from `[1 - s, 1 + s]`; 0: unchanged."))
    hue: float = Field(0.0, ge=0, le=0.5, description=(
        "Hue shift drawn from `[-h, h]` (0 to 0.5). Off by default: captions and answers "
        "name colours."))


class AugmentConfig(Section):
    """Training-only image augmentation (docs/data.md); null turns a part off."""

    random_resized_crop: RandomResizedCropConfig | None = Field(
        RandomResizedCropConfig(), description="Random crop and resize; null: none.")
    color_jitter: ColorJitterConfig | None = Field(
        ColorJitterConfig(), description="Colour jitter; null: none.")
    hflip: bool = Field(False, description=(
        "Random horizontal flips. Off by default: captions say \"left\" and \"right\", which "
        "a mirror image makes false."))


class TextConfig(Section):
    """How captions and questions are normalised before tokenisation."""

    lowercase: bool = Field(True, description="Lower-case every text.")
    strip_punctuation: bool = Field(False, description="Remove punctuation from every text.")
    stopwords_for_retrieval: bool = Field(False, description=(
        "Drop English function words from the texts ITC and ITM read (captions for the "
        "decoder keep them)."))
    max_words: int | None = Field(None, ge=1, description=(
        "Cut texts to this many words (BLIP's `max_words`); null: no cut."))


class DataConfig(Section):
    """Where the data is and how it becomes batches."""

    root: str = Field("data/shapes", description=(
        "The data folder; every source path is relative to it."))
    sources: list[DataSource] = Field(default_factory=shapes_sources, min_length=1, description=(
        "The datasets to read, each a mapping with a `format` (see the formats below); "
        "their records are pooled. Default: the shapes layout that `tuwen data shapes` "
        "writes (`captions.json` in Karpathy format + VQAv2 `vqa_questions_{split}.json`, "
        "`vqa_annotations_{split}.json`, images `images/{image_id:06d}.png`)."))
    cache_dir: str | None = Field(None, description=(
        "Where images held inside other files (HF datasets, tar shards) are written, "
        "relative to `root`. Default: `root/.cache`."))
    train_split: str = Field("train", description="The run's training split name.")
    val_split: str = Field("val", description="The run's validation split name.")
    image_size: int = Field(64, ge=8, description=(
        "Side of the square model input in pixels; images are resized to it. An `hf` image "
        "tower replaces it with its image processor's size."))
    image_mean: tuple[float, float, float] = Field((0.5, 0.5, 0.5), description=(
        "Per-channel (RGB) mean subtracted after scaling pixels to 0..1; an `hf` image tower "
        "replaces it with its processor's."))
    image_std: tuple[float, float, float] = Field((0.5, 0.5, 0.5), description=(
        "Per-channel (RGB) standard deviation divided by; an `hf` image tower replaces it "
        "with its processor's."))
    max_text_length: int = Field(40, ge=4, description=(
        "Tokens per text, special tokens included; longer texts are cut."))
    captions_per_image: int = Field(4, ge=1, description=(
        "Captions drawn per image per step: ITC uses all of them, the decoder and ITM the "
        "first."))
    questions_per_image: int = Field(3, ge=1, description=(
        "Questions drawn per image per step."))
    answer_vocab_size: int = Field(100, ge=2, description=(
        "VQA classification: the most frequent training answers kept as classes (VQAv2 "
        "uses 3129)."))
    tokenizer: TokenizerConfig = Field(TokenizerConfig(), description=(
        "The tokenizer trained when no Hugging Face tower brings its own."))
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0, description=(
        "Share of unreadable records or images (0..1) skipped before the run fails."))
    num_workers: int = Field(0, ge=0, description=(
        "DataLoader worker processes; 0: load in the training process."))
    prefetch_factor: int = Field(2, ge=1, description=(
        "Batches each worker prepares ahead (with `num_workers` > 0)."))
    persistent_workers: bool = Field(False, description=(
        "Keep the workers alive between epochs (with `num_workers` > 0)."))
    augment: AugmentConfig | None = Field(AugmentConfig(), description=(
        "Training-only image augmentation; null: none."))
    text: TextConfig = Field(TextConfig(), description="Text normalisation.")

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
        """The labels some source may feed: ``caption`` and/or ``vqa``."""
        return frozenset().union(*(s.provides() for s in self.sources))
