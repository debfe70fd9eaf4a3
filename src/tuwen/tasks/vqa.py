"""Visual question answering: classification over an answer vocabulary (the VQAv2
standard), or generation (``model.vqa.mode: generate``): the decoder reads the question as a
prompt and writes the answer, with the loss on the answer tokens only (data.vqa_text).
Evaluated by VQAv2 accuracy (the official formula), and on the shapes data by how much of
the fusion's attention lands on the objects a question names.

``predict_step`` and ``generate_answers`` answer one batch as ids; ``answer_questions``
answers many questions as text, in batches, whichever the mode."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tuwen.data.answers import AnswerVocab
from tuwen.data.batch import Batch
from tuwen.data.dataset import TextTools
from tuwen.data.records import VQAItem
from tuwen.data.text import TextNormalizer
from tuwen.data.vqa_text import answer_sequences, left_padded_prompts
from tuwen.errors import TuwenError
from tuwen.models.generation import generate
from tuwen.models.heads import head_spec
from tuwen.models.image_text_model import ImageTextModel
from tuwen.models.losses import soft_answer_loss
from tuwen.models.spec import ModelSpec
from tuwen.tasks.base import Evaluation, StepInputs, Task, TaskResult
from tuwen.tasks.batching import chunk_starts, decode_until_eos, model_device
from tuwen.tasks.eval_set import EvalSet, absolute
from tuwen.tasks.lm_forward import LMSequences, lm_loss
from tuwen.tasks.metrics.grounding import relation_grounding, scene_rows
from tuwen.tasks.metrics.protocol import GROUNDING_PROTOCOL, VQA_PROTOCOL, count_histogram
from tuwen.tasks.metrics.vqa_accuracy import vqa_accuracy


@dataclass
class AnswerTargets:
    """VQA's part of a batch, one row per question."""

    targets: torch.Tensor | None = None           # (Q, answers) VQAv2 soft scores (classify)
    answer_input_ids: torch.Tensor | None = None  # (Q, T) prompt + answer (generate)
    answer_labels: torch.Tensor | None = None     # (Q, T) the answer tokens; -100 elsewhere


class AnswerCollate:
    """A batch's questions -> their ``AnswerTargets``. Answer normalisation is slow Python:
    each question's soft targets are computed once per run."""

    def __init__(self, tools: TextTools, generate: bool) -> None:
        self.tools, self.generate = tools, generate
        self._soft_scores: dict[VQAItem, dict[int, float]] = {}  # sources may share ids

    def soft_scores(self, q: VQAItem) -> dict[int, float]:
        if q not in self._soft_scores:
            self._soft_scores[q] = self.tools.vocab.soft_scores(q.answers)
        return self._soft_scores[q]

    def __call__(self, batch: Batch) -> AnswerTargets | None:
        rows, tools = batch.questions, self.tools
        if rows is None:
            return None
        part = AnswerTargets()
        if tools.vocab is not None:
            part.targets = torch.zeros(len(rows.items), len(tools.vocab))
            for r, q in enumerate(rows.items):
                for idx, score in self.soft_scores(q).items():
                    part.targets[r, idx] = score
        if self.generate:
            part.answer_input_ids, part.answer_labels = answer_sequences(
                tools.tokenizer, [tools.normalize(q.question) for q in rows.items],
                [q.multiple_choice_answer for q in rows.items], tools.max_length, tools.chat)
        return part


class VqaTask(Task):
    name = "vqa"
    labels = "vqa"
    metric = "vqa"
    description = "visual question answering"

    def heads(self, spec: ModelSpec) -> dict[str, dict]:
        m = spec.model
        return {"vqa_head": head_spec("answer", dim=m.hidden_size, num_answers=spec.num_answers,
                                      dropout=m.dropout, queries=m.vqa.readout_queries,
                                      positions=m.vqa.read_positions)}

    def collate(self, tools, options, spec, train):
        return AnswerCollate(tools, spec.model.vqa.mode == "generate")

    def loss(self, step: StepInputs, options) -> torch.Tensor | None:
        if generates_answers(step.model):
            return lm_loss(step, self, options)
        rows, part = step.batch.questions, step.batch.part(self.name)
        if rows is None or part is None:
            return None
        logits = answer_logits(step.model, rows.input_ids, rows.attention_mask,
                               step.image.tokens[rows.image])
        return soft_answer_loss(logits, part.targets)

    def lm_sequences(self, step: StepInputs, options) -> LMSequences | None:
        """Generation (``model.vqa.mode: generate``): each question's prompt + answer, the
        loss on the answer tokens only."""
        rows, part = step.batch.questions, step.batch.part(self.name)
        if rows is None or part is None or not generates_answers(step.model):
            return None
        if part.answer_input_ids is None:
            raise TuwenError("model.vqa.mode=generate needs answer sequences in the batch (the "
                             "VQA task collates them for a generating model)")
        return LMSequences(part.answer_input_ids, part.answer_labels, rows.image)

    def evaluate(self, ev: Evaluation, data: EvalSet) -> TaskResult | None:
        if not data.questions:
            return None
        results = [evaluate_vqa(ev, data) if ev.vocab is not None else None,
                   evaluate_grounding(ev, data) if ev.scenes is not None else None]
        return merge([r for r in results if r is not None])


def merge(results: list[TaskResult]) -> TaskResult | None:
    if not results:
        return None
    out = TaskResult()
    for r in results:
        out.metrics.update(r.metrics)
        out.protocol.update(r.protocol)
        out.predictions += r.predictions
    return out


def generates_answers(model: ImageTextModel) -> bool:
    return model.spec.model.vqa.mode == "generate"


def answer_logits(model: ImageTextModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  image_tokens: torch.Tensor) -> torch.Tensor:
    question = model.encode_text(input_ids, attention_mask)
    fused = model.fuse(question, image_tokens)
    return model.vqa_head(fused.pooled, fused.fused, attention_mask)


@torch.no_grad()
def predict_step(model: ImageTextModel, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the most likely answer per question (B,)."""
    image = model.encode_image(pixel_values)
    return answer_logits(model, input_ids, attention_mask, image.tokens).argmax(dim=-1)


@torch.no_grad()
def generate_answers(model: ImageTextModel, pixel_values: torch.Tensor, prompt_ids: torch.Tensor,
                     prompt_mask: torch.Tensor, max_new_tokens: int = 8,
                     **options) -> torch.Tensor:
    """Generated answer ids (B, T) after left-padded prompts (data.vqa_text); greedy unless
    ``options`` say otherwise (as ``generation.generate`` takes them)."""
    tokens = model.encode_image(pixel_values).tokens
    return generate(model, tokens, prompt_ids=prompt_ids, prompt_mask=prompt_mask,
                    max_new_tokens=max_new_tokens, **{"decoding": "greedy", **options})


@torch.no_grad()
def answer_questions(model: ImageTextModel, tokenizer, vocab: AnswerVocab | None,
                     pixel_values: torch.Tensor, image_rows: Sequence[int],
                     questions: Sequence[str], *, max_length: int, batch_size: int = 64,
                     show_progress: bool = False, text_tokenizer=None) -> list[str]:
    """One answer per question, ``questions[i]`` asked of ``pixel_values[image_rows[i]]``
    (images (N_img, 3, H, W) are shared by their questions), ``batch_size`` questions at a
    time. Questions are normalised as in training; a classifier answers from ``vocab``, a
    generating model (``model.vqa.mode: generate``) writes its answer greedily. ``tokenizer``
    is the language model's (prompts, answers); a classifier reads the questions in
    ``text_tokenizer``, the text encoder's own when it has one."""
    if vocab is None and not generates_answers(model):
        raise TuwenError("this model was trained without VQA data: it has no answer vocabulary")
    device = model_device(model)
    normalize = TextNormalizer.from_config(model.spec.text)
    answers: list[str] = []
    for start in chunk_starts(len(questions), batch_size, "vqa", show_progress):
        texts = [normalize(q) for q in questions[start: start + batch_size]]
        px = pixel_values[list(image_rows[start: start + batch_size])].to(device)
        if generates_answers(model):
            ids, mask = left_padded_prompts(tokenizer, texts, max_length, model.spec.chat)
            out = generate_answers(model, px, ids.to(device), mask.to(device))
            answers.extend(decode_until_eos(tokenizer, out, model.spec.eos_token_id))
            continue
        enc = (text_tokenizer or tokenizer)(texts, padding="longest", truncation=True,
                                            max_length=max_length, return_tensors="pt")
        pred = predict_step(model, px, enc["input_ids"].to(device),
                            enc["attention_mask"].to(device))
        answers.extend(vocab.answer(i) for i in pred.tolist())
    return answers


# ---- evaluation ------------------------------------------------------------------------

def evaluate_vqa(ev: Evaluation, data: EvalSet) -> TaskResult:
    """VQAv2 accuracy (the official formula), overall, by answer type and by question type."""
    questions = data.questions
    answers = answer_questions(ev.model, ev.tokenizer, ev.vocab, data.images.pixels,
                               data.question_rows(), [q.question for q in questions],
                               max_length=ev.max_length, batch_size=ev.cfg.batch_size,
                               show_progress=ev.show_progress, text_tokenizer=ev.text_tokenizer)
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
                          if generates_answers(ev.model)
                          else "classification over the answer vocabulary"),
            "answer_vocab_size": len(ev.vocab),
            "answer_vocab_coverage": ev.vocab.coverage(q.multiple_choice_answer
                                                       for q in questions)}


def _vqa_lines(questions: Sequence[VQAItem], preds: dict, per_question: dict) -> list[dict]:
    return [{"task": "vqa", "question_id": q.question_id, "image_id": q.image_id,
             "image": absolute(q.image_path), "question": q.question,
             "question_type": q.question_type, "answer_type": q.answer_type,
             "answer": preds[q.question_id], "gt": q.multiple_choice_answer,
             "accuracy": per_question.get(q.question_id)} for q in questions]


def evaluate_grounding(ev: Evaluation, data: EvalSet) -> TaskResult | None:
    """How much of the fusion's attention lands on the objects that relative-position
    questions name; None when no question qualifies or the fusion has no cross-attention."""
    relative = [q for q in data.questions if q.question_type == "relative_position"]
    objects = scene_rows([q.image_id for q in relative], ev.scenes.objects)
    if not relative or objects is None:
        return None
    shares = relation_grounding(ev.model, ev.text_tok,
                                data.images.pixels[data.question_rows(relative)],
                                [q.question for q in relative], objects,
                                max_length=ev.max_length, batch_size=ev.cfg.batch_size,
                                scene_size=ev.scenes.image_size)
    if shares is None:
        return None
    return TaskResult({"grounding": shares}, {"grounding": GROUNDING_PROTOCOL})
