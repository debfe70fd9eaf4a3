"""``tuwen score``: the standard metrics on result files from any model.

Each function reads the files, checks that predictions and references cover the same ids,
scores with the same code ``tuwen eval`` uses, and returns a ``metrics.json`` dict (keys as in
DESIGN.md §4) with its protocol record. Coverage rules:

* captions: every prediction's image must be in the references; every reference image needs
  a prediction unless ``subset=True``, which scores the predicted images only (COCOEvalCap's
  rule, and what scoring a Karpathy test split against a full ``captions_val2014.json`` needs);
* VQA: predictions and annotations cover exactly the same questions (the official ``loadRes``);
* retrieval: every text belongs to one image and every image has at least one text.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuwen.errors import DataError
from tuwen.evaluation.result_files import (
    CaptionReferences,
    ResultFile,
    read_caption_references,
    read_caption_results,
    read_retrieval_ground_truth,
    read_similarities,
    read_vqa_ground_truth,
    read_vqa_results,
)
from tuwen.tasks.metrics.caption_metrics import caption_scores
from tuwen.tasks.metrics.protocol import (
    FROM_RESULTS_FILE,
    RETRIEVAL_PROTOCOL,
    VQA_PROTOCOL,
    base_protocol,
    count_histogram,
    file_record,
    ids_sha256,
    references_per_image,
)
from tuwen.tasks.metrics.retrieval_metrics import retrieval_recall
from tuwen.tasks.metrics.vqa_accuracy import vqa_accuracy

CAPTION_KEYS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")


# --- captions -----------------------------------------------------------------------------


def score_captions(predictions: str | Path, references: str | Path, *,
                   split: str | None = None, subset: bool = False) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr of COCO caption results against COCO or Karpathy
    references (``split``: the Karpathy split, default ``"test"``; a label for COCO files)."""
    refs = read_caption_references(references, split)
    preds = read_caption_results(predictions)
    _check_caption_ids(preds, refs, subset)
    # In prediction order, as COCOEvalCap takes its image ids from the results
    scored = {k: refs.captions[k] for k in preds.values}
    scores = caption_scores(preds.values, scored)
    protocol = base_protocol(refs.split, source="tuwen score captions", n_images=len(scored))
    protocol.update(
        image_ids_sha256=ids_sha256(scored),
        predictions=file_record(preds.path),
        references=file_record(refs.path, format=refs.format),
        reference_images_not_scored=len(refs.captions) - len(scored),
        caption={**scores["protocol"], "references_per_image": references_per_image(scored),
                 "decoding": FROM_RESULTS_FILE},
    )
    return {"split": refs.split, "n_images": len(scored), "skipped": len(refs.skipped),
            "caption": {k: scores[k] for k in CAPTION_KEYS}, "protocol": protocol,
            "skipped_reasons": refs.skipped[:20]}


def _check_caption_ids(preds: ResultFile, refs: CaptionReferences, subset: bool) -> None:
    where = refs.path.name + (f" (split {refs.split!r})" if refs.format == "karpathy" else "")
    unknown = [k for k in preds.values if k not in refs.captions]
    if unknown:
        k = unknown[0]
        raise DataError(preds.path, f"image_id {k!r} is not a reference image of {where}; "
                                    f"{len(unknown)} of {len(preds.values)} predictions are "
                                    f"not{_id_hint(k, refs.captions)}",
                        index=preds.index[k], key="image_id")
    missing = [k for k in refs.captions if k not in preds.values]
    if missing and not subset:
        raise DataError(preds.path, f"{len(missing)} of {len(refs.captions)} reference images "
                                    f"of {where} have no prediction (first image_id "
                                    f"{missing[0]!r}); predict them all, or score only the "
                                    "predicted images (--subset, as COCOEvalCap does)")


def _id_hint(image_id: Any, known: dict) -> str:
    """Why an id may not match: ``"42"`` against ``42``, or what the references' ids look like."""
    other = int(image_id) if isinstance(image_id, str) and image_id.isdigit() else str(image_id)
    if other in known:
        return (f" (the references have {other!r}: ids are compared with their JSON type, "
                "string or integer)")
    return f" (reference ids look like {', '.join(repr(k) for k in list(known)[:3])})"


# --- VQA ----------------------------------------------------------------------------------


def score_vqa(predictions: str | Path, questions: str | Path, annotations: str | Path) -> dict:
    """Official VQAv2 accuracy (percent) overall, by answer type and by question type."""
    gt = read_vqa_ground_truth(questions, annotations)
    preds = read_vqa_results(predictions)
    _check_vqa_ids(preds, gt.annotations, Path(annotations))
    result = vqa_accuracy(preds.values, gt.questions, gt.annotations)
    question_ids = [a["question_id"] for a in gt.annotations]
    image_ids = {a["image_id"] for a in gt.annotations}
    protocol = base_protocol(gt.split, source="tuwen score vqa", n_images=len(image_ids),
                             n_questions=len(question_ids))
    protocol.update(
        question_ids_sha256=ids_sha256(question_ids),
        image_ids_sha256=ids_sha256(image_ids),
        predictions=file_record(preds.path),
        questions=file_record(questions),
        annotations=file_record(annotations),
        vqa={**VQA_PROTOCOL,
             "answers_per_question": count_histogram(len(a["answers"]) for a in gt.annotations),
             "answering": FROM_RESULTS_FILE},
    )
    return {"split": gt.split, "n_images": len(image_ids), "n_questions": len(question_ids),
            "skipped": 0,
            "vqa": {k: result[k] for k in ("accuracy", "by_answer_type", "by_question_type")},
            "protocol": protocol}


def _check_vqa_ids(preds: ResultFile, annotations: list[dict], apath: Path) -> None:
    annotated = {a["question_id"] for a in annotations}
    unknown = [q for q in preds.values if q not in annotated]
    if unknown:
        raise DataError(preds.path, f"question_id {unknown[0]} is not annotated in "
                                    f"{apath.name}; {len(unknown)} of {len(preds.values)} "
                                    "predictions are not",
                        index=preds.index[unknown[0]], key="question_id")
    missing = [a["question_id"] for a in annotations if a["question_id"] not in preds.values]
    if missing:
        raise DataError(preds.path, f"{len(missing)} of {len(annotated)} questions of "
                                    f"{apath.name} have no predicted answer (first question_id "
                                    f"{missing[0]}); the official evaluation needs them all")


# --- retrieval ----------------------------------------------------------------------------


def score_retrieval(similarities: str | Path, ground_truth: str | Path,
                    ks: Sequence[int] = (1, 5, 10)) -> dict:
    """R@K, median and mean rank, image->text and text->image, from a similarity matrix
    ``(n_images, n_texts)`` and ``{"text_image": [image row of each text]}``."""
    sim = read_similarities(similarities)
    gt = read_retrieval_ground_truth(ground_truth, sim.shape)
    result = retrieval_recall(sim, gt.text_image, ks)
    n_images, n_texts = sim.shape
    protocol = base_protocol(gt.split, source="tuwen score retrieval", n_images=n_images)
    protocol.update(
        image_ids_sha256=ids_sha256(gt.image_ids) if gt.image_ids is not None else None,
        similarities=file_record(similarities, shape=[n_images, n_texts]),
        ground_truth=file_record(ground_truth),
        retrieval={**RETRIEVAL_PROTOCOL, "score": "similarities read from a file",
                   "n_texts": n_texts,
                   # every image row has a text (checked), so the counter sees each one
                   "texts_per_image": count_histogram(Counter(gt.text_image).values())},
    )
    return {"split": gt.split, "n_images": n_images, "n_texts": n_texts, "skipped": 0,
            "retrieval": {k: v for k, v in result.items() if not k.endswith("_ranks")},
            "protocol": protocol}


def write_metrics(metrics: dict, out: str | Path) -> Path:
    """Write ``metrics`` as indented JSON, creating the folder."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return out


def score_summary(metrics: dict) -> str:
    """The headline numbers of a score result, one ``name value`` line each."""
    lines = [f"{k} {json.dumps(metrics[k])}" for k in ("split", "n_images", "n_questions",
                                                       "n_texts") if k in metrics]
    for group in ("caption", "vqa", "retrieval"):
        for name, value in metrics.get(group, {}).items():
            if name == "by_question_type":  # dozens of types: in the JSON only
                continue
            items = value.items() if isinstance(value, dict) else [(None, value)]
            for sub, number in items:
                label = f"{group}.{name}" + (f".{sub}" if sub is not None else "")
                lines.append(f"{label} {_number(number)}")
    reason = metrics["protocol"].get("caption", {}).get("meteor_unavailable")
    if reason:
        lines.append(f"(meteor is null: {reason})")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "null" if value is None else f"{value:.4f}".rstrip("0").rstrip(".")
