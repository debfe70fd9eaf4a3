"""Evaluate a model on one split: one evaluator per task, then the files.

Each evaluator runs its task's batched inference (``tuwen.tasks``), scores the output with the
metrics papers report and returns a ``TaskResult``: its keys of ``metrics.json``, its part of
the protocol record and its lines of ``predictions.jsonl``. ``evaluate_split`` assembles them
into ``metrics.json`` (keys as in DESIGN.md §4, plus the protocol used) and
``predictions.jsonl`` (one line per caption, retrieval query image, caption query and
question); ``evaluate_run`` does so for a run's saved model and writes the report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuwen.config import EvalConfig, load_config
from tuwen.data.answers import AnswerVocab
from tuwen.data.images import ImageTransform
from tuwen.data.prepare import SplitData, read_split
from tuwen.data.records import ImageCaptions, VQAItem
from tuwen.data.tokenizer import load_text_tokenizer, load_tokenizer
from tuwen.evaluation.caption_metrics import caption_scores
from tuwen.evaluation.eval_set import EvalSet, select_eval_set
from tuwen.evaluation.grounding import Scenes, load_scenes, relation_grounding, scene_rows
from tuwen.evaluation.model_card import add_eval_results
from tuwen.evaluation.protocol import (
    GROUNDING_PROTOCOL,
    RETRIEVAL_PROTOCOL,
    VQA_PROTOCOL,
    base_protocol,
    count_histogram,
    decoding_settings,
    ids_sha256,
    references_per_image,
)
from tuwen.evaluation.report import write_report
from tuwen.evaluation.retrieval_metrics import retrieval_recall
from tuwen.evaluation.vqa_accuracy import vqa_accuracy
from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks import captioning, retrieval, vqa

CAPTION_METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")


@dataclass
class TaskResult:
    """One task's share of the outputs."""

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

    @property
    def text_tok(self) -> Any:
        """The tokenizer of the text encoder's inputs: retrieval texts and questions."""
        return self.text_tokenizer or self.tokenizer


def _abs(path: str | Path) -> str:
    """Image paths in predictions.jsonl are absolute: the report may be drawn elsewhere."""
    return str(Path(path).absolute())


# ---- captioning --------------------------------------------------------------------------

def evaluate_captions(ev: Evaluation, data: EvalSet) -> TaskResult:
    """BLEU, METEOR, ROUGE-L and CIDEr of ``eval.decoding``'s captions (``caption``) and, when
    that decoding is not greedy, of greedy ones too (``caption_greedy``)."""
    refs = {r.image_id: list(r.captions) for r in data.captions}
    ids, pixels = [r.image_id for r in data.captions], data.captioned_pixels()
    result = TaskResult()
    for decoding in dict.fromkeys([ev.cfg.decoding, "greedy"]):
        key = "caption" if decoding == ev.cfg.decoding else f"caption_{decoding}"
        texts = _generate(ev, pixels, decoding)
        preds = dict(zip(ids, texts))
        scores = caption_scores(preds, refs)
        result.metrics[key] = {**{k: scores[k] for k in CAPTION_METRICS},
                               "distinct_captions": len(set(texts)) / max(len(texts), 1)}
        result.protocol[key] = {**scores.get("protocol", {}), **decoding_settings(ev.cfg, decoding),
                                "references_per_image": references_per_image(refs)}
        if key == "caption":
            result.predictions = _caption_lines(data.captions, preds, refs,
                                                scores.get("per_image", {}))
    return result


def _generate(ev: Evaluation, pixels: torch.Tensor, decoding: str) -> list[str]:
    cfg = ev.cfg
    return captioning.generate_captions(
        ev.model, ev.tokenizer, pixels, batch_size=cfg.batch_size, decoding=decoding,
        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, show_progress=ev.show_progress,
        beam_size=cfg.beam_size, length_penalty=cfg.length_penalty, top_p=cfg.top_p,
        temperature=cfg.temperature)


def _caption_lines(captions: Sequence[ImageCaptions], preds: dict, refs: dict,
                   per_image: dict) -> list[dict]:
    return [{"task": "caption", "image_id": r.image_id, "image": _abs(r.image_path),
             "caption": preds[r.image_id], "references": refs[r.image_id],
             **per_image.get(r.image_id, {})} for r in captions]


# ---- retrieval ---------------------------------------------------------------------------

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
             "image": _abs(r.image_path), "i2t_rank": int(i2t_ranks[i]) + 1,
             "top": [texts[j] for j in top_texts[i]],
             "top_right": [owner[j] == i for j in top_texts[i]]}
            for i, r in enumerate(queries.captions)] + [
            {"task": "retrieval", "direction": "t2i", "query": text, "image_id": ids[owner[j]],
             "t2i_rank": int(t2i_ranks[j]) + 1, "top": [ids[i] for i in top_images[j]]}
            for j, text in enumerate(texts)]


# ---- visual question answering -----------------------------------------------------------

def evaluate_vqa(ev: Evaluation, data: EvalSet) -> TaskResult:
    """VQAv2 accuracy (the official formula), overall, by answer type and by question type."""
    questions = data.questions
    answers = vqa.answer_questions(ev.model, ev.tokenizer, ev.vocab, data.images.pixels,
                                   data.question_rows(), [q.question for q in questions],
                                   max_length=ev.max_length, batch_size=ev.cfg.batch_size,
                                   show_progress=ev.show_progress,
                                   text_tokenizer=ev.text_tokenizer)
    preds = {q.question_id: a for q, a in zip(questions, answers)}
    scores = vqa_accuracy(preds, *_vqa_records(questions))
    metrics = {k: scores[k] for k in ("accuracy", "by_answer_type", "by_question_type")}
    return TaskResult({"vqa": metrics}, {"vqa": _vqa_protocol(ev, questions)},
                      _vqa_lines(questions, preds, scores.get("per_question", {})))


def _vqa_records(questions: Sequence[VQAItem]) -> tuple[list[dict], list[dict]]:
    """The questions as the VQAv2 files hold them: ``questions[]`` and ``annotations[]``."""
    qs = [{"question_id": q.question_id, "image_id": q.image_id, "question": q.question}
          for q in questions]
    anns = [{"question_id": q.question_id, "image_id": q.image_id,
             "question_type": q.question_type, "answer_type": q.answer_type,
             "multiple_choice_answer": q.multiple_choice_answer,
             "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(q.answers)]}
            for q in questions]
    return qs, anns


def _vqa_protocol(ev: Evaluation, questions: Sequence[VQAItem]) -> dict:
    return {**VQA_PROTOCOL,
            "answers_per_question": count_histogram(len(q.answers) for q in questions),
            "answering": ("generation, greedy (model.vqa.mode: generate)"
                          if vqa.generates_answers(ev.model)
                          else "classification over the answer vocabulary"),
            "answer_vocab_size": len(ev.vocab),
            "answer_vocab_coverage": ev.vocab.coverage(q.multiple_choice_answer
                                                       for q in questions)}


def _vqa_lines(questions: Sequence[VQAItem], preds: dict, per_question: dict) -> list[dict]:
    return [{"task": "vqa", "question_id": q.question_id, "image_id": q.image_id,
             "image": _abs(q.image_path), "question": q.question,
             "question_type": q.question_type, "answer_type": q.answer_type,
             "answer": preds[q.question_id], "gt": q.multiple_choice_answer,
             "accuracy": per_question.get(q.question_id)} for q in questions]


# ---- grounding (shapes data) -------------------------------------------------------------

def evaluate_grounding(ev: Evaluation, data: EvalSet, scenes: Scenes) -> TaskResult | None:
    """How much of the fusion's attention lands on the objects that relative-position
    questions name; None when no question qualifies or the fusion has no cross-attention."""
    relative = [q for q in data.questions if q.question_type == "relative_position"]
    objects = scene_rows([q.image_id for q in relative], scenes.objects)
    if not relative or objects is None:
        return None
    shares = relation_grounding(ev.model, ev.text_tok,
                                data.images.pixels[data.question_rows(relative)],
                                [q.question for q in relative], objects,
                                max_length=ev.max_length, batch_size=ev.cfg.batch_size,
                                scene_size=scenes.image_size)
    if shares is None:
        return None
    return TaskResult({"grounding": shares}, {"grounding": GROUNDING_PROTOCOL})


# ---- one split ---------------------------------------------------------------------------

def run_evaluators(ev: Evaluation, data: EvalSet, scenes: Scenes | None) -> list[TaskResult]:
    """Every task of ``eval.tasks`` that the data has labels for, in the order of the files."""
    tasks = ev.cfg.tasks
    results: list[TaskResult | None] = []
    if "caption" in tasks and data.captions:
        results.append(evaluate_captions(ev, data))
    if "retrieval" in tasks and data.captions:
        results.append(evaluate_retrieval(ev, data))
    if "vqa" in tasks and data.questions:
        if ev.vocab is not None:
            results.append(evaluate_vqa(ev, data))
        if scenes is not None:
            results.append(evaluate_grounding(ev, data, scenes))
    return [r for r in results if r is not None]


def assemble_metrics(data: EvalSet, results: Sequence[TaskResult],
                     text_normalization: dict) -> dict:
    """``metrics.json``: the counts, each task's metrics, then the protocol of them all
    (``text_normalization``: the model's text settings, as its questions were read)."""
    protocol = base_protocol(data.split, source="tuwen eval", n_images=len(data.captions),
                             n_questions=len(data.questions))
    protocol.update(image_ids_sha256=ids_sha256([r.image_id for r in data.captions]),
                    question_ids_sha256=ids_sha256([q.question_id for q in data.questions]),
                    text_normalization=text_normalization)
    metrics: dict = {"split": data.split, "n_images": len(data.captions),
                     "n_questions": len(data.questions), "skipped": len(data.skipped)}
    for result in results:
        metrics.update(result.metrics)
        protocol.update(result.protocol)
    return {**metrics, "protocol": protocol, "skipped_reasons": data.skipped[:20]}


def write_outputs(out_dir: Path, metrics: dict, results: Sequence[TaskResult]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with (out_dir / "predictions.jsonl").open("w") as f:
        for line in (line for result in results for line in result.predictions):
            f.write(json.dumps(line) + "\n")


@torch.no_grad()
def evaluate_split(model: ImageTextModel, tokenizer, vocab: AnswerVocab | None, data: SplitData,
                   cfg: EvalConfig, out_dir: Path, max_length: int,
                   show_progress: bool = True,
                   scenes: Scenes | None = None, text_tokenizer: Any = None) -> dict:
    """Every task of ``cfg.tasks`` on ``data`` -> ``out_dir/{metrics.json,predictions.jsonl}``.
    With ``scenes`` (shapes data: every image's objects) ``metrics["grounding"]`` says how much
    of the fusion's attention lands on the objects relative-position questions name.
    ``tokenizer`` is the language model's; ``text_tokenizer`` the text encoder's own (None:
    the language model's serves both)."""
    model.eval()
    ev = Evaluation(model, tokenizer, vocab, cfg, max_length, show_progress, text_tokenizer)
    eval_set = select_eval_set(data, cfg, ImageTransform.for_model(model.spec), show_progress)
    results = run_evaluators(ev, eval_set, scenes)
    metrics = assemble_metrics(eval_set, results, model.spec.text.model_dump(mode="json"))
    write_outputs(out_dir, metrics, results)
    return metrics


def evaluate_run(run_dir: str | Path, split: str, *, tasks: list[str] | None = None,
                 overrides: list[str] | None = None, show_progress: bool = True) -> dict:
    """Evaluate ``RUN/model`` on ``split`` of the run's own data config -> ``RUN/eval/<split>/``."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml", overrides)
    if tasks:
        config.eval.tasks = tasks
    model_dir = run_dir / "model"
    model = ImageTextModel.from_pretrained(model_dir)
    vocab_path = model_dir / "answer_vocab.json"
    vocab = AnswerVocab.load(vocab_path) if vocab_path.is_file() else None
    data = read_split(config.data, split)
    scenes = load_scenes(config.data.root)  # shapes data: the objects of every image
    metrics = evaluate_split(model, load_tokenizer(model_dir), vocab, data, config.eval,
                             run_dir / "eval" / split, config.data.max_text_length, show_progress,
                             scenes=scenes, text_tokenizer=load_text_tokenizer(model_dir))
    write_report(run_dir / "eval" / split, run_dir, show_progress=show_progress)
    add_eval_results(model_dir, split, metrics)  # the model card's results (model_card.py)
    return metrics
