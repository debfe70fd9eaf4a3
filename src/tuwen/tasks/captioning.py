"""Captioning: teacher-forced LM loss for training, generation for prediction
(``predict_step`` on one batch, ``generate_captions`` over many images, as text), and the
caption metrics papers report (BLEU, METEOR, ROUGE-L, CIDEr) as its evaluator."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from pydantic import Field

from tuwen.config import Section
from tuwen.data.batch import Batch
from tuwen.data.dataset import TextTools
from tuwen.data.records import ImageCaptions
from tuwen.data.vqa_text import continuation_ids, end_id, right_padded, teacher_forcing
from tuwen.models.generation import generate
from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks.base import Evaluation, StepInputs, Task, TaskResult
from tuwen.tasks.batching import chunk_starts, decode_until_eos, model_device
from tuwen.tasks.eval_set import EvalSet, absolute
from tuwen.tasks.lm_forward import LMSequences, lm_loss
from tuwen.tasks.metrics.caption_metrics import caption_scores
from tuwen.tasks.metrics.protocol import decoding_settings, references_per_image

CAPTION_METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")


@dataclass
class DecoderRows:
    """The caption task's part of a batch: each caption row as the decoder learns it."""

    input_ids: torch.Tensor  # (R, T) [BOS] w1 .. wn, or the chat prompt then the caption
    labels: torch.Tensor     # (R, T) the next tokens; -100 where no loss is taken


def decoder_rows(tools: TextTools, batch: Batch) -> DecoderRows | None:
    """[BOS] w1 .. wn  ->  w1 .. wn [EOS]; padding labelled -100. With a chat template the
    prompt is its caption request and the caption the reply, closed by the end of turn:
    <prompt> w1 .. wn -> w1 .. wn <end>, the prompt labelled -100."""
    if batch.captions is None:
        return None
    tok, chat = tools.tokenizer, tools.chat
    texts = [tools.normalize(c) for c in batch.captions.texts]
    if chat is None:
        prompt = [tok.bos_token_id]
        ids = tok(texts, add_special_tokens=False)["input_ids"]
    else:
        prompt = list(chat.caption_prompt)
        ids = continuation_ids(tok, [chat.prompt(chat.caption_request)] * len(texts), texts)
    end = end_id(tok, chat)
    rows = [teacher_forcing(prompt, seq[: tools.max_length - 1], end) for seq in ids]
    return DecoderRows(*right_padded(rows, tok.pad_token_id))


class CaptionOptions(Section):
    """Options of the caption task (train.task_options.caption)."""

    label_smoothing: float = Field(0.0, ge=0, lt=1, description=(
        "Label smoothing of the captioning cross-entropy (0..1)."))


class CaptionTask(Task):
    name = "caption"
    labels = "caption"
    metric = "caption"
    description = "captioning, the language-model cross-entropy of each image's first caption"
    Options = CaptionOptions

    def collate(self, tools, options, spec, train):
        return partial(decoder_rows, tools)

    def loss(self, step: StepInputs, options: CaptionOptions) -> torch.Tensor | None:
        return lm_loss(step, self, options)

    def lm_sequences(self, step: StepInputs, options: CaptionOptions) -> LMSequences | None:
        rows, part = step.batch.captions, step.batch.part(self.name)
        if rows is None or part is None:
            return None
        first = rows.first  # one caption per image: the decoder is the costly part
        return LMSequences(part.input_ids[first], part.labels[first], rows.image[first],
                           options.label_smoothing)

    def evaluate(self, ev: Evaluation, data: EvalSet) -> TaskResult | None:
        return evaluate_captions(ev, data) if data.captions else None


@torch.no_grad()
def predict_step(model: ImageTextModel, pixel_values: torch.Tensor, *, decoding: str = "greedy",
                 max_new_tokens: int = 30, **options) -> torch.Tensor:
    """Generated token ids (B, T), without BOS, padded after EOS; ``options`` as
    ``generation.generate`` takes them (beam_size, length_penalty, top_p, generator, ...)."""
    tokens = model.encode_image(pixel_values).tokens
    return generate(model, tokens, decoding=decoding, max_new_tokens=max_new_tokens, **options)


@torch.no_grad()
def generate_captions(model: ImageTextModel, tokenizer, pixel_values: torch.Tensor, *,
                      batch_size: int = 64, decoding: str = "greedy", max_new_tokens: int = 30,
                      seed: int = 0, show_progress: bool = False, **options) -> list[str]:
    """One caption per image of ``pixel_values`` (N, 3, H, W), generated ``batch_size`` images
    at a time on the model's device; ``seed`` seeds ``decoding="top_p"`` sampling, and
    ``options`` are ``predict_step``'s (beam_size, length_penalty, top_p, temperature)."""
    device = model_device(model)
    sampler = torch.Generator(device).manual_seed(seed)
    captions: list[str] = []
    for start in chunk_starts(len(pixel_values), batch_size, f"caption ({decoding})",
                              show_progress):
        ids = predict_step(model, pixel_values[start: start + batch_size].to(device),
                           decoding=decoding, max_new_tokens=max_new_tokens,
                           generator=sampler, **options)
        captions.extend(decode_until_eos(tokenizer, ids, model.spec.eos_token_id))
    return captions


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
    return generate_captions(
        ev.model, ev.tokenizer, pixels, batch_size=cfg.batch_size, decoding=decoding,
        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, show_progress=ev.show_progress,
        beam_size=cfg.beam_size, length_penalty=cfg.length_penalty, top_p=cfg.top_p,
        temperature=cfg.temperature)


def _caption_lines(captions: Sequence[ImageCaptions], preds: dict, refs: dict,
                   per_image: dict) -> list[dict]:
    return [{"task": "caption", "image_id": r.image_id, "image": absolute(r.image_path),
             "caption": preds[r.image_id], "references": refs[r.image_id],
             **per_image.get(r.image_id, {})} for r in captions]
