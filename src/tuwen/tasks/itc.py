"""Image-text contrastive learning (ITC): InfoNCE between each image and its captions over
the batch's (with several processes: the global batch's) other captions and images, with a
learnable temperature; evaluated by retrieval recall both ways."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from pydantic import Field

from tuwen.config import Section
from tuwen.data.batch import Batch
from tuwen.data.dataset import caption_image_counts
from tuwen.data.records import ImageCaptions
from tuwen.models.heads import head_spec
from tuwen.models.losses import contrastive_loss
from tuwen.models.spec import ModelSpec
from tuwen.tasks import retrieval
from tuwen.tasks.base import Evaluation, StepInputs, Task, TaskResult
from tuwen.tasks.eval_set import EvalSet, absolute
from tuwen.tasks.metrics.protocol import RETRIEVAL_PROTOCOL, count_histogram
from tuwen.tasks.metrics.retrieval_metrics import retrieval_recall


@dataclass
class CaptionWeights:
    """ITC's part of a batch with ``specific_captions``: each caption row's target weight."""

    weight: torch.Tensor  # (R,) 1 / (training images that have this caption)


class ItcOptions(Section):
    """Options of ITC (train.task_options.itc)."""

    specific_captions: bool = Field(False, description=(
        "Image-to-text ITC targets weigh each caption by 1 / (training images with that "
        "caption): an image's rarer, more specific captions count more."))


def caption_weights(counts, batch: Batch) -> CaptionWeights | None:
    if batch.captions is None:
        return None
    return CaptionWeights(torch.tensor([1.0 / counts.get(t, 1)
                                        for t in batch.captions.retrieval_texts]))


class ItcTask(Task):
    name = "itc"
    labels = "caption"
    metric = "retrieval"
    description = "image-text contrastive learning, InfoNCE"
    Options = ItcOptions
    whole_batch = True  # its negatives are the batch's other samples

    def heads(self, spec: ModelSpec) -> dict[str, dict]:
        m = spec.model
        return {"itc_head": head_spec("contrastive", dim=m.hidden_size, embed_dim=m.embed_dim)}

    def collate(self, tools, options: ItcOptions, spec, train):
        if not options.specific_captions or train is None:
            return None
        return partial(caption_weights, caption_image_counts(train.captions, tools.normalize))

    def loss(self, step: StepInputs, options: ItcOptions) -> torch.Tensor | None:
        shared = step.shared(retrieval.caption_embeddings)
        if shared is None:
            return None
        part = step.batch.part(self.name)
        return world_loss(step.model, shared.world, None if part is None else part.weight)

    def evaluate(self, ev: Evaluation, data: EvalSet) -> TaskResult | None:
        return evaluate_retrieval(ev, data) if data.captions else None


def world_loss(model, world: retrieval.World, weight: torch.Tensor | None) -> torch.Tensor:
    """InfoNCE over every process's embeddings in ``world``; ``weight`` (R,): this process's
    caption weights (``specific_captions``), or None."""
    weights = None if weight is None else world.cat(weight, world.text_sizes)
    return contrastive_loss(world.image_embeds, world.text_embeds, model.itc_head.scale(),
                            world.positives, text_weights=weights)


# ---- evaluation: recall@K both ways ------------------------------------------------------

@dataclass
class RetrievalQueries:
    captions: list[ImageCaptions]   # the images, in rows
    texts: list[str]                # every caption, image by image
    owner: list[int]                # each text's image row

    @classmethod
    def of(cls, captions: list[ImageCaptions]) -> RetrievalQueries:
        return cls(captions, [c for r in captions for c in r.captions],
                   [i for i, r in enumerate(captions) for _ in r.captions])


@dataclass
class Ranking:
    i2t_scores: np.ndarray   # (N_img, N_txt) how each image ranks the texts
    t2i_scores: np.ndarray   # (N_img, N_txt) how each text ranks the images
    recall: dict             # retrieval_recall's keys, with i2t_ranks and t2i_ranks


def evaluate_retrieval(ev: Evaluation, data: EvalSet) -> TaskResult:
    """Recall@1/5/10 both ways by ITC similarity; with ``eval.itm_rerank_k`` the re-ranked
    recall is ``retrieval`` and the ITC one ``retrieval_itc``."""
    queries = RetrievalQueries.of(data.captions)
    ids, mask = retrieval.tokenize_texts(ev.model, ev.text_tok, queries.texts, ev.max_length)
    feats = retrieval.retrieval_features(ev.model, data.captioned_pixels(), ids, mask,
                                         batch_size=ev.cfg.batch_size,
                                         show_progress=ev.show_progress)
    sim = feats.similarity()
    itc = Ranking(sim, sim, retrieval_recall(sim, queries.owner))
    protocol = {**RETRIEVAL_PROTOCOL, "score": "itc cosine", "n_texts": len(queries.texts),
                "texts_per_image": count_histogram(len(r.captions) for r in data.captions)}
    k = ev.cfg.itm_rerank_k
    if not k:
        return TaskResult({"retrieval": _summary(itc.recall)}, {"retrieval": protocol},
                          _retrieval_lines(queries, itc))
    ranked = _itm_ranking(ev, feats, sim, queries.owner)
    protocol["score"] = (f"itc cosine, top-{k} per query re-ranked by itm probability + itc "
                         "(BLIP protocol)")
    return TaskResult({"retrieval_itc": _summary(itc.recall), "retrieval": _summary(ranked.recall)},
                      {"retrieval": protocol}, _retrieval_lines(queries, ranked))


def _itm_ranking(ev: Evaluation, feats: retrieval.RetrievalFeatures, sim: np.ndarray,
                 owner: list[int]) -> Ranking:
    i2t, t2i = (retrieval.itm_rerank(ev.model, feats, sim, ev.cfg.itm_rerank_k, direction,
                                     ev.cfg.batch_size, show_progress=ev.show_progress)
                for direction in ("i2t", "t2i"))
    i2t_recall, t2i_recall = retrieval_recall(i2t, owner), retrieval_recall(t2i, owner)
    return Ranking(i2t, t2i, {**{k: v for k, v in i2t_recall.items() if k.startswith("i2t")},
                              **{k: v for k, v in t2i_recall.items() if k.startswith("t2i")}})


def _summary(recall: dict) -> dict:
    return {k: v for k, v in recall.items() if not k.endswith("_ranks")}


def _retrieval_lines(queries: RetrievalQueries, ranking: Ranking, k: int = 5) -> list[dict]:
    """Per query (image, then caption): the 1-based rank of the right answer and the top k."""
    ids, texts, owner = [r.image_id for r in queries.captions], queries.texts, queries.owner
    top_texts = np.argsort(-ranking.i2t_scores, axis=1, kind="stable")[:, :k]    # (N_img, k)
    top_images = np.argsort(-ranking.t2i_scores, axis=0, kind="stable")[:k].T    # (N_txt, k)
    i2t_ranks, t2i_ranks = ranking.recall["i2t_ranks"], ranking.recall["t2i_ranks"]
    return [{"task": "retrieval", "direction": "i2t", "image_id": ids[i],
             "image": absolute(r.image_path), "i2t_rank": int(i2t_ranks[i]) + 1,
             "top": [texts[j] for j in top_texts[i]],
             "top_right": [owner[j] == i for j in top_texts[i]]}
            for i, r in enumerate(queries.captions)] + [
            {"task": "retrieval", "direction": "t2i", "query": text, "image_id": ids[owner[j]],
             "t2i_rank": int(t2i_ranks[j]) + 1, "top": [ids[i] for i in top_images[j]]}
            for j, text in enumerate(texts)]
