"""Zero-shot image classification (CLIP's protocol) through the ITC embeddings.

Each class name becomes texts through prompt templates ("a photo of a {}."); their ITC
embeddings, averaged over the templates and renormalised (template ensembling), are the
classifier's weights; an image's class is the one whose embedding is nearest its own. Nothing
is trained for it: it scores what contrastive training learned, on class-labelled images
(an ``imagefolder`` source). Metrics: top-1 and top-5 accuracy (percent), per-class
accuracy and the confusion matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field, field_validator

from tuwen.config import Section
from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks import retrieval
from tuwen.tasks.base import Evaluation, Task, TaskResult
from tuwen.tasks.batching import chunk_starts, model_device
from tuwen.tasks.eval_set import EvalSet, absolute

DEFAULT_TEMPLATES = ("a photo of a {}.", "a {}.", "a picture of a {}.", "there is a {}.")


class ClassifyOptions(Section):
    """Options of zero-shot classification (train.task_options.classify)."""

    templates: list[str] = Field(list(DEFAULT_TEMPLATES), min_length=1, description=(
        "Prompt templates, `{}` standing for the class name; each class's text embedding "
        "is the mean over them (template ensembling)."))

    labels: list[str] | None = Field(None, description=(
        "The class names to choose among, besides the split's own (an image folder's "
        "sub-folders); null: the split's. Naming every class keeps a split that holds only "
        "some of them a fair test."))

    @field_validator("templates")
    @classmethod
    def _one_slot_each(cls, templates: list[str]) -> list[str]:
        bad = [t for t in templates if t.count("{}") != 1]
        if bad:
            raise ValueError(f"each template needs exactly one '{{}}' for the class name, "
                             f"got {bad[0]!r}")
        return templates


@torch.no_grad()
def class_embeddings(model: ImageTextModel, tokenizer, names: Sequence[str],
                     templates: Sequence[str], max_length: int,
                     batch_size: int = 256) -> torch.Tensor:
    """(C, E) unit-norm: each class name's ITC text embedding, averaged over ``templates``."""
    texts = [t.format(name) for name in names for t in templates]
    ids, mask = retrieval.tokenize_texts(model, tokenizer, texts, max_length)
    device, parts = model_device(model), []
    for start in range(0, len(texts), batch_size):
        chunk = slice(start, start + batch_size)
        embeds, _ = retrieval.embed_texts(model, ids[chunk].to(device), mask[chunk].to(device))
        parts.append(embeds.float().cpu())
    per_template = torch.cat(parts).view(len(names), len(templates), -1)
    return torch.nn.functional.normalize(per_template.mean(dim=1), dim=-1)


@torch.no_grad()
def image_embeddings(model: ImageTextModel, pixel_values: torch.Tensor, batch_size: int = 64,
                     show_progress: bool = False) -> torch.Tensor:
    """(N, E) unit-norm ITC image embeddings, ``batch_size`` images at a time."""
    device, parts = model_device(model), []
    for start in chunk_starts(len(pixel_values), batch_size, "embed images", show_progress):
        feats = model.encode_image(pixel_values[start: start + batch_size].to(device))
        parts.append(model.itc_head.embed_image(feats.pooled).float().cpu())
    return torch.cat(parts)


def class_probabilities(model: ImageTextModel, image_embeds: torch.Tensor,
                        class_embeds: torch.Tensor) -> torch.Tensor:
    """(N, C) softmax over the classes of the temperature-scaled cosines, as ITC trained."""
    scale = model.itc_head.scale().detach().float().cpu()
    return (scale * image_embeds @ class_embeds.t()).softmax(dim=-1)


@dataclass
class Confusion:
    names: list[str]
    truth: np.ndarray      # (N,) true class index
    ranked: np.ndarray     # (N, C) class indexes, best first

    def top(self, k: int) -> float:
        return 100.0 * float((self.ranked[:, :k] == self.truth[:, None]).any(axis=1).mean())

    def matrix(self) -> np.ndarray:
        """(C, C) counts: row the true class, column the predicted one."""
        out = np.zeros((len(self.names), len(self.names)), dtype=np.int64)
        np.add.at(out, (self.truth, self.ranked[:, 0]), 1)
        return out

    def per_class(self) -> dict[str, float]:
        m = self.matrix()
        return {name: 100.0 * float(m[i, i] / m[i].sum())
                for i, name in enumerate(self.names) if m[i].sum()}


def evaluate_classes(ev: Evaluation, data: EvalSet, options: ClassifyOptions) -> TaskResult:
    names = sorted({r.label for r in data.classes} | set(options.labels or ()))
    class_embeds = class_embeddings(ev.model, ev.text_tok, names, options.templates,
                                    ev.max_length)
    image_embeds = image_embeddings(ev.model, data.classified_pixels(), ev.cfg.batch_size,
                                    ev.show_progress)
    probs = class_probabilities(ev.model, image_embeds, class_embeds).numpy()
    index = {name: i for i, name in enumerate(names)}
    confusion = Confusion(names, np.array([index[r.label] for r in data.classes]),
                          np.argsort(-probs, axis=1, kind="stable"))
    metrics = {"top1": confusion.top(1), "top5": confusion.top(5), "n_classes": len(names),
               "per_class": confusion.per_class(),
               "confusion": {"labels": names, "matrix": confusion.matrix().tolist()}}
    protocol = {"method": "zero-shot: ITC cosine to each class's mean template embedding "
                          "(CLIP's template ensembling)",
                "templates": list(options.templates), "n_images": len(data.classes),
                "chance_top1": 100.0 / len(names)}
    lines = [{"task": "classify", "image_id": r.image_id, "image": absolute(r.image_path),
              "label": r.label, "predicted": names[confusion.ranked[i, 0]],
              "top5": [[names[j], round(float(probs[i, j]), 4)] for j in confusion.ranked[i, :5]],
              "right": bool(confusion.ranked[i, 0] == confusion.truth[i])}
             for i, r in enumerate(data.classes)]
    return TaskResult({"classify": metrics}, {"classify": protocol}, lines)


class ClassifyTask(Task):
    name = "classify"
    labels = "class"
    trains = False
    metric = "classify"
    description = "zero-shot image classification through the ITC embeddings (evaluated only)"
    Options = ClassifyOptions

    def evaluate(self, ev: Evaluation, data: EvalSet) -> TaskResult | None:
        return evaluate_classes(ev, data, ev.options_of(self)) if data.classes else None
