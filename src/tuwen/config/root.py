"""``Config``: the four sections of a run, and the checks that span two of them."""

from __future__ import annotations

from pydantic import Field, model_validator

from tuwen.config.base import Section
from tuwen.config.data import DataConfig
from tuwen.config.eval import EvalConfig
from tuwen.config.model import ModelConfig, SmallViTConfig
from tuwen.config.sources import WebDatasetSource
from tuwen.config.train import TASK_LABELS, TrainConfig

_NEEDS = {"caption": "a data source with captions", "vqa": "a data source with questions"}


class Config(Section):
    """A whole run: data, model, training and evaluation."""

    data: DataConfig = Field(DataConfig(), description="The data and how it becomes batches.")
    model: ModelConfig = Field(ModelConfig(), description="The model's parts and sizes.")
    train: TrainConfig = Field(TrainConfig(), description="The training run.")
    eval: EvalConfig = Field(EvalConfig(), description="What `tuwen eval` scores and how.")

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
        has = self.data.provides()
        for task, weight in self.train.tasks.given().items():
            label = TASK_LABELS[task]
            if weight and label not in has:
                raise ValueError(f"train.tasks.{task}={weight} needs {_NEEDS[label]} "
                                 "(set its weight to 0, leave it unset, or add one to "
                                 "data.sources)")
        if not self.train.task_schedule and not self.train.tasks.active(has):
            raise ValueError("train.tasks: no task to train: the data sources have no labels "
                             "for the tasks left with a weight > 0")
        return self

    @model_validator(mode="after")
    def _specific_captions_are_counted(self) -> Config:
        if self.train.itc_specific_captions and any(
                isinstance(s, WebDatasetSource) for s in self.data.sources):
            raise ValueError("train.itc_specific_captions counts every training caption up "
                             "front, which a streamed webdataset source does not allow")
        return self
