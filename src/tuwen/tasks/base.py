"""What a task is: one class that declares everything about one objective or evaluator.

A task says which labels it needs (``labels``: captions, questions, class names), its options
(``Options``, set under ``train.task_options.<name>``), how its part of a batch is collated
(``collate``), the heads it adds to the model (``heads``), its loss (``loss``) and its
evaluator (``evaluate``, its section of ``metrics.json``). The table of tasks
(``tuwen.tasks.table.TASKS``) is the only list of them: task weights and schedules, the
joint step, per-task gradient norms, evaluation and the config reference read it.

Within one step the tasks share their inputs through ``StepInputs``: the image is encoded
once, and what two tasks both need (ITC and ITM: the captions' embeddings; the generative
tasks: one language-model forward over all their sequences, tasks.lm_forward) is computed
once by whichever asks first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel

from tuwen.config import EvalConfig, NoOptions
from tuwen.config.tasks import validated_options
from tuwen.data.answers import AnswerVocab
from tuwen.data.batch import Batch
from tuwen.data.dataset import PartCollate, TextTools
from tuwen.data.prepare import SplitData
from tuwen.models.image_encoders import ImageFeatures
from tuwen.models.image_text_model import ImageTextModel
from tuwen.models.spec import ModelSpec
from tuwen.tasks.eval_set import EvalSet

if TYPE_CHECKING:
    from tuwen.tasks.lm_forward import LMSequences


class StepInputs:
    """One step's batch and what its tasks share, each computed on first use."""

    def __init__(self, model: ImageTextModel, batch: Batch, gather: bool = False,
                 tasks: Mapping[str, tuple[Task, Any]] | None = None,
                 image: ImageFeatures | None = None) -> None:
        self.model, self.batch, self.gather = model, batch, gather
        self.tasks = dict(tasks or {})  # the step's tasks with their options (joint_step)
        self._image = image  # None: encoded on first use
        self._shared: dict[Callable, Any] = {}

    @property
    def image(self) -> ImageFeatures:
        """The batch's images through the image encoder (once per step)."""
        if self._image is None:
            self._image = self.model.encode_image(self.batch.pixel_values)
        return self._image

    def shared(self, compute: Callable[[StepInputs], Any]) -> Any:
        """``compute(self)``, once per step whoever asks (e.g. the ITC embeddings that ITM
        mines its negatives from)."""
        if compute not in self._shared:
            self._shared[compute] = compute(self)
        return self._shared[compute]


@dataclass
class TaskResult:
    """One evaluator's share of the outputs."""

    metrics: dict[str, Any] = field(default_factory=dict)     # top-level keys of metrics.json
    protocol: dict[str, Any] = field(default_factory=dict)    # keys of metrics["protocol"]
    predictions: list[dict] = field(default_factory=list)     # lines of predictions.jsonl


@dataclass
class Evaluation:
    """The model under evaluation and how to run it."""

    model: ImageTextModel
    tokenizer: Any           # the language model's: captions, prompts, generated answers
    vocab: AnswerVocab | None
    cfg: EvalConfig
    max_length: int          # of a tokenised text (data.max_text_length)
    show_progress: bool = True
    text_tokenizer: Any = None  # the text encoder's own, when it has one (None: tokenizer)
    scenes: Any = None       # shapes data: every image's objects (metrics.grounding.Scenes)
    options: dict[str, Any] = field(default_factory=dict)  # task name -> its options

    def options_of(self, task: Task) -> Any:
        """``task``'s options (its defaults when the caller gave none)."""
        return self.options.get(task.name) or task.Options()

    @property
    def text_tok(self) -> Any:
        """The tokenizer of the text encoder's inputs: retrieval texts and questions."""
        return self.text_tokenizer or self.tokenizer


class Task:
    """Base of every task: set the class attributes, override what the task does."""

    name: ClassVar[str] = ""
    labels: ClassVar[str] = "caption"   # the label kind it needs: caption, vqa, class
    description: ClassVar[str] = ""
    trains: ClassVar[bool] = True       # False: an evaluator only (no loss, no weight)
    # True: its loss couples the batch's samples (contrastive negatives), so accumulating
    # micro-batches computes it over all of them at once (training.grad_cache)
    whole_batch: ClassVar[bool] = False
    metric: ClassVar[str | None] = None  # its section of metrics.json and eval.tasks name
    Options: ClassVar[type[BaseModel]] = NoOptions

    def options_from(self, raw: Any, where: str) -> BaseModel:
        return validated_options(self.Options, raw, where)

    def heads(self, spec: ModelSpec) -> dict[str, dict]:
        """The heads it adds: attribute -> ``models.heads.head_spec(...)``."""
        return {}

    def collate(self, tools: TextTools, options: Any, spec: ModelSpec,
                train: SplitData | None) -> PartCollate | None:
        """Its batch part's collate function (``train``: the training records, None when
        collating validation batches), or None when it needs no part of its own."""
        return None

    def loss(self, step: StepInputs, options: Any) -> torch.Tensor | None:
        """Its unweighted loss on ``step``'s batch; None when the batch has nothing for it."""
        return None

    def lm_sequences(self, step: StepInputs, options: Any) -> LMSequences | None:
        """Its teacher-forced sequences for the language model, which the step's generative
        tasks share one forward over (tasks.lm_forward; its ``loss`` then returns
        ``lm_loss(step, self, options)``); None when it does not train the decoder."""
        return None

    def evaluate(self, ev: Evaluation, data: EvalSet) -> TaskResult | None:
        """Its metrics on an evaluation set; None when it has none there."""
        return None
