"""``Config``: the four sections of a run, and the checks that span two of them."""

from __future__ import annotations

import warnings
from typing import Any

from pydantic import Field, ValidationInfo, model_validator

from tuwen.config.base import Section
from tuwen.config.data import DataConfig
from tuwen.config.eval import EvalConfig
from tuwen.config.model import ModelConfig, SmallCNNConfig, SmallViTConfig
from tuwen.config.sources import WebDatasetSource
from tuwen.config.tasks import check_task_names, task_catalog
from tuwen.config.train import MOVED, TrainConfig
from tuwen.errors import TuwenWarning


class Config(Section):
    """A whole run: data, model, training and evaluation."""

    data: DataConfig = Field(DataConfig(), description="The data and how it becomes batches.")
    model: ModelConfig = Field(ModelConfig(), description="The model's parts and sizes.")
    train: TrainConfig = Field(TrainConfig(), description="The training run.")
    eval: EvalConfig = Field(EvalConfig(), description="What `tuwen eval` scores and how.")

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, raw: Any) -> Any:
        """Keys that moved into a task's options (a run directory written before) are read
        there, with a note naming the new place; a value already set there wins."""
        if not isinstance(raw, dict):
            return raw
        raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
        for (section, key), to in MOVED.items():
            if not isinstance(raw.get(section), dict) or key not in raw[section]:
                continue
            value = raw[section].pop(key)
            _, _, task, option = to.split(".")
            train = raw.setdefault("train", {})
            options = train.setdefault("task_options", {})
            options = {**options, task: {option: value, **(options.get(task) or {})}}
            train["task_options"] = options
            warnings.warn(f"{section}.{key} is now {to}; read as such", TuwenWarning,
                          stacklevel=2)
        return raw

    @model_validator(mode="after")
    def _image_fits_patches(self) -> Config:
        if not isinstance(self.model.image_encoder, (SmallViTConfig, SmallCNNConfig)):
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
    def _tasks_have_data(self, info: ValidationInfo) -> Config:
        """With the table of tasks (see config.tasks): a weight > 0 needs a source with the
        task's labels, and some task must train."""
        catalog = task_catalog(info)
        if catalog is None:
            return self
        has = self.data.provides()
        for name, weight in self.train.tasks.items():
            task = catalog[name]
            if weight and not task.trains:
                raise ValueError(f"train.tasks.{name}={weight}: {name} is evaluated, not "
                                 "trained (leave it out or set 0)")
            if weight and task.labels not in has:
                raise ValueError(f"train.tasks.{name}={weight} needs a data source with "
                                 f"{task.labels} labels (set its weight to 0, leave it out, "
                                 "or add one to data.sources)")
        active = [n for n, t in catalog.items() if t.trains and
                  self.train.tasks.get(n, float(t.labels in has)) > 0]
        if not self.train.task_schedule and not active:
            raise ValueError("train.tasks: no task to train: the data sources have no labels "
                             "for the tasks left with a weight > 0")
        if self.eval.tasks is not None:
            check_task_names({t.metric: t for t in catalog.values() if t.metric}, "eval.tasks",
                             self.eval.tasks)
        return self

    @model_validator(mode="after")
    def _specific_captions_are_counted(self) -> Config:
        specific = self.train.task_options.get("itc", {}).get("specific_captions", False)
        if specific and any(isinstance(s, WebDatasetSource) for s in self.data.sources):
            raise ValueError("train.task_options.itc.specific_captions counts every training "
                             "caption up front, which a streamed webdataset source does not "
                             "allow")
        return self
