"""The local lmms-eval task's functions (lmms-eval imports this file by its path)."""

from PIL import Image

from tuwen.evaluation.vqa_accuracy import question_accuracy


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def process_results(doc, results):
    # percent, as tuwen eval's vqa.accuracy (the mean over questions is lmms-eval's)
    return {"vqa_accuracy": 100 * question_accuracy(results[0], doc["answers"])}
