"""Visual question answering: classification over an answer vocabulary (the VQAv2
standard), or generation (``model.vqa.mode: generate``): the decoder reads the question as a
prompt and writes the answer, with the loss on the answer tokens only (data.vqa_text).

``predict_step`` and ``generate_answers`` answer one batch as ids; ``answer_questions``
answers many questions as text, in batches, whichever the mode."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tuwen.data.answers import AnswerVocab
from tuwen.data.text import TextNormalizer
from tuwen.data.vqa_text import left_padded_prompts
from tuwen.errors import TuwenError
from tuwen.models.generation import generate
from tuwen.models.image_encoders import ImageFeatures
from tuwen.models.image_text_model import ImageTextModel
from tuwen.models.losses import soft_answer_loss
from tuwen.tasks.batching import chunk_starts, decode_until_eos, model_device


def generates_answers(model: ImageTextModel) -> bool:
    return model.spec.model.vqa.mode == "generate"


def answer_logits(model: ImageTextModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  image_tokens: torch.Tensor) -> torch.Tensor:
    question = model.encode_text(input_ids, attention_mask)
    fused = model.fuse(question, image_tokens)
    return model.vqa_head(fused.pooled, fused.fused, attention_mask)


def training_step(model: ImageTextModel, batch: dict,
                  image: ImageFeatures) -> dict[str, torch.Tensor]:
    if "question_image" not in batch:
        return {}
    if generates_answers(model):
        return {"vqa": answer_loss(model, batch, image)}
    logits = answer_logits(model, batch["question_input_ids"], batch["question_attention_mask"],
                           image.tokens[batch["question_image"]])
    return {"vqa": soft_answer_loss(logits, batch["vqa_targets"])}


@torch.no_grad()
def predict_step(model: ImageTextModel, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the most likely answer per question (B,)."""
    image = model.encode_image(pixel_values)
    return answer_logits(model, input_ids, attention_mask, image.tokens).argmax(dim=-1)


def answer_loss(model: ImageTextModel, batch: dict, image: ImageFeatures) -> torch.Tensor:
    """Teacher-forced LM loss of the answers after their question prompts."""
    if "answer_input_ids" not in batch:
        raise TuwenError("model.vqa.mode=generate needs answer sequences in the batch "
                         "(data.dataset.Collator(..., vqa_answers=True))")
    return model.decoder.loss(batch["answer_input_ids"], image.tokens[batch["question_image"]],
                              batch["answer_labels"])


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
