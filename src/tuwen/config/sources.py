"""``data.sources``: where the training and evaluation records come from, one entry per
dataset file or folder, each with its ``format`` (docs/data.md)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from tuwen.config.base import Section, typed_union

# captions feed caption/itc/itm; class: classify; chat: the chat task
SOURCE_LABELS = ("caption", "vqa", "class", "chat")
COCO_IMAGE_PATTERN = "COCO_{subtype}_{image_id:012d}.jpg"  # VQAv2's images, by COCO file name

SPLIT_PATH = " `{split}` in the path becomes the source's name for the run's split."


class SourceConfig(Section):
    """Keys every data source has; each ``format`` adds its own.

    Paths are relative to ``data.root``; ``{split}`` in a path becomes the source's split name.
    """

    name: str | None = Field(None, description=(
        "The source's name in reports and errors. Default: its format, numbered when "
        "several sources share a format."))
    weight: float = Field(1.0, gt=0, description=(
        "Repeat factor: how many times each of its images is drawn per epoch (> 0; "
        "fractions draw a share)."))
    tasks: list[Literal["caption", "vqa", "class", "chat"]] | None = Field(None, description=(
        "The labels to use from this source: `caption` (captions, feeding caption/itc/itm), "
        "`vqa` (questions), `class` (class names, for zero-shot classification), `chat` "
        "(conversations, for the chat task). Default: every label it has."))
    splits: list[str] | dict[str, str | list[str]] | None = Field(None, description=(
        "Which run splits this source serves. A list: only these splits, under the same "
        "names; a mapping: run split -> this source's split name(s); unset: every split, "
        "under the run's names."))
    image_root: str | None = Field(None, description=(
        "The folder image paths are relative to (itself relative to `data.root`). Default: "
        "the annotation file's folder (vqav2: `data.root`; hf: the dataset folder or the "
        "first data file's folder; webdataset: not used)." + SPLIT_PATH))
    LABELS: ClassVar[frozenset[str]] = frozenset({"caption", "vqa"})

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
    """A Karpathy split JSON (``dataset_coco.json``, ``dataset_flickr30k.json``): captions,
    with each image's split in the file."""

    format: Literal["karpathy"] = Field("karpathy", description="Picks this format.")
    path: str = Field("captions.json", description=(
        "The JSON file. Images are found at `image_root/filepath/filename`; `image_root` "
        "defaults to this file's folder." + SPLIT_PATH))
    LABELS: ClassVar[frozenset[str]] = frozenset({"caption"})


class CocoSource(SourceConfig):
    """COCO caption annotations (``captions_train2017.json``)."""

    format: Literal["coco"] = Field("coco", description="Picks this format.")
    path: str = Field(description=(
        "The annotations file, e.g. `annotations/captions_{split}2017.json` with "
        "`image_root: \"{split}2017\"`." + SPLIT_PATH))
    LABELS: ClassVar[frozenset[str]] = frozenset({"caption"})


class VQAv2Source(SourceConfig):
    """VQAv2 questions + annotations JSON; images by COCO file name or an id -> file map."""

    format: Literal["vqav2"] = Field("vqav2", description="Picks this format.")
    questions: str = Field(description=(
        "The questions file, e.g. `v2_OpenEnded_mscoco_{split}2014_questions.json`."
        + SPLIT_PATH))
    annotations: str = Field(description=(
        "The annotations (answers) file, e.g. `v2_mscoco_{split}2014_annotations.json`."
        + SPLIT_PATH))
    image_pattern: str | None = Field(None, description=(
        "Image file name under `image_root`, a Python format string with `{image_id}` and "
        "`{subtype}` (the questions file's `data_subtype`). Default: "
        f"`{COCO_IMAGE_PATTERN}`. Exclusive with `image_map`."))
    image_map: str | None = Field(None, description=(
        "A JSON file `{\"<image_id>\": \"relative/path.jpg\"}` that locates each image "
        "(paths relative to `image_root`). Exclusive with `image_pattern`." + SPLIT_PATH))
    LABELS: ClassVar[frozenset[str]] = frozenset({"vqa"})

    @model_validator(mode="after")
    def _one_locator(self) -> VQAv2Source:
        if self.image_pattern is not None and self.image_map is not None:
            raise ValueError("set one of image_pattern and image_map, not both")
        return self


class JsonlSource(SourceConfig):
    """JSON lines, one object a line: `image` plus `caption` or `captions`, or `question` +
    `answers` (optional: `image_id`, `split`, `question_id`, `question_type`, `answer_type`)."""

    format: Literal["jsonl"] = Field("jsonl", description="Picks this format.")
    path: str = Field(description="The `.jsonl` file." + SPLIT_PATH)


class CsvSource(SourceConfig):
    """A CSV table with a header row and the columns a `jsonl` line has."""

    format: Literal["csv"] = Field("csv", description="Picks this format.")
    path: str = Field(description="The `.csv` file (a header row)." + SPLIT_PATH)
    delimiter: str = Field(",", min_length=1, max_length=1, description=(
        "The column separator, one character."))
    list_separator: str = Field("|", min_length=1, description=(
        "Separates several captions or answers inside one cell."))


class WebDatasetSource(SourceConfig):
    """WebDataset tar shards as img2dataset writes them (``KEY.jpg`` + ``KEY.txt`` or
    ``KEY.json``); streamed during training."""

    format: Literal["webdataset"] = Field("webdataset", description="Picks this format.")
    shards: str = Field(description=(
        "A brace pattern of tar files, e.g. `cc3m/{00000..00331}.tar`." + SPLIT_PATH))
    shuffle_buffer: int = Field(1000, ge=0, description=(
        "Samples held to shuffle the stream in training; 0: shard order only."))
    caption_key: str = Field("caption", description=(
        "The caption's key in `KEY.json`, read when a sample has no `KEY.txt`."))
    LABELS: ClassVar[frozenset[str]] = frozenset({"caption"})


class HFSource(SourceConfig):
    """A Hugging Face ``datasets`` dataset: ``path`` for load_from_disk, or ``builder`` with
    local ``data_files`` for load_dataset (json, csv, parquet, imagefolder...)."""

    format: Literal["hf"] = Field("hf", description="Picks this format.")
    path: str | None = Field(None, description=(
        "A folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`. "
        "Exclusive with `builder`."))
    builder: str | None = Field(None, description=(
        "A `datasets` builder for local files (`json`, `csv`, `parquet`, `imagefolder`...), "
        "with `data_files`. Exclusive with `path`."))
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(None, description=(
        "The builder's local files: one pattern, a list, or split -> files."))
    image_column: str = Field("image", description=(
        "The image column: an `Image` feature or a path string."))
    text_column: str | None = Field("caption", description=(
        "The caption column: a string or a list of strings; null: no captions."))
    question_column: str | None = Field(None, description=(
        "The question column; null: no questions."))
    answers_column: str = Field("answers", description=(
        "The answers column: strings, or VQAv2-style `{\"answer\": ...}` objects."))
    image_id_column: str | None = Field(None, description=(
        "A column that identifies the image. Default: the image file, or a hash of its bytes."))

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


class ImageFolderSource(SourceConfig):
    """Images sorted into one folder per class (torchvision's ImageFolder layout:
    ``path/<class name>/<image>``): class labels, scored by zero-shot classification."""

    format: Literal["imagefolder"] = Field("imagefolder", description="Picks this format.")
    path: str = Field(description=(
        "The folder holding one sub-folder per class; the sub-folder's name (underscores "
        "read as spaces) is the class name." + SPLIT_PATH))
    LABELS: ClassVar[frozenset[str]] = frozenset({"class"})


class LlavaSource(SourceConfig):
    """LLaVA instruction data: a JSON list of ``{"id", "image", "conversations": [{"from":
    "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}``; a sample
    without ``image`` is a text-only conversation."""

    format: Literal["llava"] = Field("llava", description="Picks this format.")
    path: str = Field(description=(
        "The JSON file (a list of conversations). Image paths are relative to `image_root`, "
        "default this file's folder; a sample's optional `split` key keeps it out of other "
        "splits." + SPLIT_PATH))
    LABELS: ClassVar[frozenset[str]] = frozenset({"chat"})


SOURCES: dict[str, type[SourceConfig]] = {
    "karpathy": KarpathySource, "coco": CocoSource, "vqav2": VQAv2Source, "jsonl": JsonlSource,
    "csv": CsvSource, "webdataset": WebDatasetSource, "hf": HFSource,
    "imagefolder": ImageFolderSource, "llava": LlavaSource,
}
DataSource = typed_union(SOURCES, default=None, key="format")


def shapes_sources() -> list[SourceConfig]:
    """The built-in shapes layout (``tuwen data shapes``): Karpathy captions + VQAv2."""
    return [KarpathySource(name="captions"),
            VQAv2Source(name="vqa", questions="vqa_questions_{split}.json",
                        annotations="vqa_annotations_{split}.json",
                        image_pattern="images/{image_id:06d}.png")]
