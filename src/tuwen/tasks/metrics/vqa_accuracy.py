"""VQA accuracy exactly as the official VQAv2 evaluation (``vqaEval.py``) computes it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuwen.data.answers import normalize_answer
from tuwen.errors import TuwenError

_ANNOTATION_KEYS = ("question_id", "question_type", "answer_type", "answers")


def _clean(text: str) -> str:
    # The official script turns newlines and tabs into spaces and strips, nothing more.
    return text.replace("\n", " ").replace("\t", " ").strip()


def _official_round(values: list[float]) -> float:
    # Same operation order as setAccuracy: round(100*float(sum(acc))/len(acc), 2).
    return round(100 * float(sum(values)) / len(values), 2)


def question_accuracy(prediction: str, gt_answers: list[dict[str, Any]]) -> float:
    """Accuracy (0..1) of one predicted answer against the annotators' answer records.

    Mirrors the official loop: strip \\n/\\t; normalise the gt answers *and the prediction*
    only if the (stripped) gt answers are not all identical; then, for each annotator,
    ``min(1, #other annotators whose answer equals the prediction / 3)``, averaged. As in the
    official code an annotator is left out by record equality (``item != gtAnsDatum``), so
    two identical records (same ``answer_id``) leave together.
    """
    records = [{**r, "answer": _clean(r["answer"])} for r in gt_answers]
    pred = _clean(prediction)
    if len({r["answer"] for r in records}) > 1:
        records = [{**r, "answer": normalize_answer(r["answer"])} for r in records]
        pred = normalize_answer(pred)
    accs = []
    for held_out in records:
        matches = sum(1 for r in records if r != held_out and r["answer"] == pred)
        accs.append(min(1, float(matches) / 3))
    return float(sum(accs)) / len(accs)


def _check_inputs(predictions: Mapping[int, str], questions: list[dict],
                  annotations: list[dict]) -> None:
    for i, ann in enumerate(annotations):
        missing = [k for k in _ANNOTATION_KEYS if k not in ann]
        if missing:
            raise TuwenError(f"VQA annotation {i} lacks key {missing[0]!r}")
        if not ann["answers"]:
            raise TuwenError(f"VQA annotation for question {ann['question_id']} has no answers")
    seen: set[int] = set()
    for ann in annotations:
        if ann["question_id"] in seen:
            raise TuwenError(f"question id {ann['question_id']} is annotated twice")
        seen.add(ann["question_id"])
    question_ids = {q["question_id"] for q in questions}
    unasked = [a["question_id"] for a in annotations if a["question_id"] not in question_ids]
    if unasked:
        raise TuwenError(f"{len(unasked)} annotated question ids are not in the questions "
                         f"(e.g. {unasked[0]}); are the questions and annotations files a pair?")
    annotated = {a["question_id"] for a in annotations}
    missing_ids = [q for q in annotated if q not in predictions]
    if missing_ids:
        raise TuwenError(f"{len(missing_ids)} of {len(annotated)} questions have no predicted "
                         f"answer (e.g. {missing_ids[0]}); VQA accuracy needs all of them")
    unknown = [q for q in predictions if q not in annotated]
    if unknown:
        raise TuwenError(f"{len(unknown)} predictions are for question ids not in the "
                         f"annotations (e.g. {unknown[0]!r})")
    bad = next((q for q, a in predictions.items() if not isinstance(a, str)), None)
    if bad is not None:
        raise TuwenError(f"predicted answer for question {bad} is "
                         f"{type(predictions[bad]).__name__}, expected a string")


def vqa_accuracy(predictions: Mapping[int, str], questions: list[dict],
                 annotations: list[dict]) -> dict:
    """Official VQAv2 accuracy of ``predictions`` (question id -> answer string).

    ``questions`` and ``annotations`` are the ``questions[]`` and ``annotations[]`` records of
    the VQAv2 files. Every annotated question needs a prediction and every prediction an
    annotated question, as in the official ``loadRes``; otherwise ``TuwenError``.

    Reproduced quirk: answers are normalised (punctuation, number words, articles,
    contractions) only when the ten gt answers are *not all identical*. When all ten agree,
    neither they nor the prediction is normalised, so ``"Yes"`` or ``"two"`` against ten
    ``"yes"`` / ``"2"`` scores 0 -- exactly as on the evaluation server.

    Returns percentages rounded to 2 decimals as the official ``setAccuracy`` does:
    ``{"accuracy", "by_answer_type", "by_question_type", "n_questions", "per_question"}``,
    where ``per_question`` holds ``round(100 * acc, 2)`` per question id (official ``evalQA``).
    """
    _check_inputs(predictions, questions, annotations)
    all_accs: list[float] = []
    by_answer_type: dict[str, list[float]] = {}
    by_question_type: dict[str, list[float]] = {}
    per_question: dict[int, float] = {}
    # Annotation order, as the official loop: float sums depend on the order.
    for ann in annotations:
        acc = question_accuracy(predictions[ann["question_id"]], ann["answers"])
        all_accs.append(acc)
        by_answer_type.setdefault(ann["answer_type"], []).append(acc)
        by_question_type.setdefault(ann["question_type"], []).append(acc)
        per_question[ann["question_id"]] = round(100 * acc, 2)
    if not all_accs:
        raise TuwenError("VQA accuracy needs at least one annotated question")
    return {
        "accuracy": _official_round(all_accs),
        "by_answer_type": {t: _official_round(v) for t, v in by_answer_type.items()},
        "by_question_type": {t: _official_round(v) for t, v in by_question_type.items()},
        "n_questions": len(all_accs),
        "per_question": per_question,
    }
