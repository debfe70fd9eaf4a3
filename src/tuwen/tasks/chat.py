"""Chat: instruction conversations (LLaVA-format data, ``format: llava``) learnt by the
language model, the loss on the assistant's replies only, and replies generated after the
turns before them.

A conversation is rendered by ``data.chat_text``: in the LM's chat template with the image's
tokens where ``<image>`` stands (``hf_causal_lm``), or as plain prompts (the small decoder,
which reads the image by cross-attention from every position). A text-only conversation
rides in the same batch with no image: its rows go through the decoder in a forward of their
own with an empty image (no prefix; an empty cross-attention context), and the task's loss is
the mean over every reply token of both.

Evaluated on held-out conversations: each one's last assistant turn, generated greedily after
the turns before it, against the reference turn (BLEU, METEOR, ROUGE-L, CIDEr as the caption
metrics compute them, and exact match after text normalisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pydantic import Field

from tuwen.config import Section
from tuwen.data.batch import Batch
from tuwen.data.chat_text import (
    IGNORE,
    Rendered,
    Turns,
    generation_prompt,
    render,
    training_sequence,
)
from tuwen.data.dataset import TextTools
from tuwen.data.records import Conversation
from tuwen.data.text import TextNormalizer
from tuwen.models.image_text_model import ImageTextModel
from tuwen.models.spec import ModelSpec
from tuwen.tasks.base import Evaluation, StepInputs, Task, TaskResult
from tuwen.tasks.batching import chunk_starts, decode_until_eos, model_device
from tuwen.tasks.eval_set import EvalSet, absolute
from tuwen.tasks.metrics.caption_metrics import caption_scores

CHAT_METRICS = ("bleu_1", "bleu_4", "meteor", "rouge_l", "cider")


@dataclass
class ChatRows:
    """The chat task's part of a batch: one row per conversation with a reply token left."""

    input_ids: torch.Tensor  # (C, T) the rendered conversation, right-padded
    labels: torch.Tensor     # (C, T) the next token inside a reply; IGNORE elsewhere
    image_at: torch.Tensor   # (C,) where the image's tokens go in input_ids (prefix LMs)
    image: torch.Tensor      # (C,) the row's image in Batch.pixel_values; -1: text-only


class ChatOptions(Section):
    """Options of the chat task (train.task_options.chat)."""

    max_length: int = Field(256, ge=8, description=(
        "Tokens of a rendered conversation the decoder learns at most; a longer one loses "
        "its end. The small decoder learns at most `data.max_text_length`."))
    label_smoothing: float = Field(0.0, ge=0, lt=1, description=(
        "Label smoothing of the replies' cross-entropy (0..1)."))
    max_new_tokens: int = Field(64, ge=1, description=(
        "Evaluation: the most tokens a generated reply has."))


def sequence_limit(spec: ModelSpec, options: ChatOptions) -> int:
    """Tokens of a conversation the decoder learns: the small decoder has
    ``max_text_length`` positions."""
    if spec.model.decoder.type == "hf_causal_lm":
        return options.max_length
    return min(options.max_length, spec.max_text_length)


def chat_sequences(tools: TextTools, conversations: Sequence[Conversation],
                   max_length: int) -> list[tuple[int, list[int], list[int], int]]:
    """(index, input_ids, labels, image_at) of each conversation with a reply token left."""
    out = []
    for i, conv in enumerate(conversations):
        seq = training_sequence(tools.tokenizer, tools.chat, conv.turns, max_length)
        if seq is not None:
            out.append((i, seq.input_ids, seq.labels, seq.image_at))
    return out


class ChatCollate:
    """A batch's conversations -> their ``ChatRows``."""

    def __init__(self, tools: TextTools, max_length: int) -> None:
        self.tools, self.max_length = tools, max_length

    def __call__(self, batch: Batch) -> ChatRows | None:
        rows = batch.conversations
        if rows is None:
            return None
        seqs = chat_sequences(self.tools, rows.items, self.max_length)
        if not seqs:
            return None
        width = max(len(ids) for _, ids, _, _ in seqs)
        input_ids = torch.full((len(seqs), width), self.tools.tokenizer.pad_token_id)
        labels = torch.full((len(seqs), width), IGNORE)
        for r, (_, ids, labs, _) in enumerate(seqs):
            input_ids[r, : len(ids)], labels[r, : len(labs)] = torch.tensor(ids), torch.tensor(labs)
        return ChatRows(input_ids, labels, torch.tensor([at for *_, at in seqs]),
                        rows.image[[i for i, *_ in seqs]])


class ChatTask(Task):
    name = "chat"
    labels = "chat"
    metric = "chat"
    description = ("instruction conversations (LLaVA format), the LM cross-entropy of the "
                   "assistant's replies")
    Options = ChatOptions

    def collate(self, tools, options, spec, train):
        return ChatCollate(tools, sequence_limit(spec, options))

    def loss(self, step: StepInputs, options: ChatOptions) -> torch.Tensor | None:
        part = step.batch.part(self.name)
        if part is None:
            return None
        return chat_loss(step, part, options.label_smoothing)

    def evaluate(self, ev: Evaluation, data: EvalSet) -> TaskResult | None:
        return evaluate_chat(ev, data, ev.options_of(self)) if data.conversations else None


def _lm(model: ImageTextModel):
    """The decoder's section when it is a Hugging Face LM, else None (read from the spec:
    a small model never imports transformers' modelling code)."""
    decoder = model.spec.model.decoder
    return decoder if decoder.type == "hf_causal_lm" else None


def splices_image(model: ImageTextModel) -> bool:
    """The decoder puts the image into the sequence (where ``<image>`` stands)."""
    lm = _lm(model)
    return lm is not None and lm.conditioning == "prefix"


def no_image(model: ImageTextModel, rows: int, device: torch.device) -> torch.Tensor:
    """(rows, 0, hidden) image tokens: a text-only conversation's."""
    return torch.zeros(rows, 0, model.spec.model.hidden_size, device=device)


def chat_loss(step: StepInputs, part: ChatRows, label_smoothing: float = 0.0) -> torch.Tensor:
    """The mean cross-entropy over every reply token: conversations with an image in one
    decoder forward, text-only ones in another."""
    model, total, count = step.model, 0.0, 0
    for rows in (part.image >= 0, part.image < 0):
        if not rows.any():
            continue
        ids, labels = part.input_ids[rows], part.labels[rows]
        with_image = bool((part.image[rows] >= 0).all())
        tokens = (step.image.tokens[part.image[rows]] if with_image
                  else no_image(model, len(ids), ids.device))
        extra = {"image_at": part.image_at[rows]} if with_image and splices_image(model) else {}
        loss = model.decoder.loss(ids, tokens, labels, label_smoothing=label_smoothing, **extra)
        n = int((labels != IGNORE).sum())
        total, count = total + loss * n, count + n
    return total / count


# ---- generation ------------------------------------------------------------------------

def _room(model: ImageTextModel, n_image: int) -> int:
    """Positions a prompt and its reply may fill: the small decoder's own; an LM's, less the
    image's tokens when they enter the sequence."""
    decoder = model.decoder
    if _lm(model) is not None:
        limit = decoder.positions or 1 << 30
        return limit - (n_image if splices_image(model) else 0)
    return decoder.max_length


def _left_padded(prompts: Sequence[Rendered], pad: int, keep: int):
    """(ids, mask, image_at) of prompts padded on the left; a prompt over ``keep`` tokens
    keeps its end."""
    rows = [(p.ids[-keep:], max(0, (p.image_at or 0) - max(0, len(p.ids) - keep)))
            for p in prompts]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    at = torch.zeros(len(rows), dtype=torch.long)
    for i, (row, image_at) in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = torch.tensor(row), 1
        at[i] = width - len(row) + image_at
    return ids, mask, at


@torch.no_grad()
def greedy_replies(model: ImageTextModel, image_tokens: torch.Tensor,
                   prompts: Sequence[Rendered], max_new_tokens: int) -> torch.Tensor:
    """Greedy continuations (B, T) of ``prompts`` about ``image_tokens`` (B, N, D; N may be
    0), the image spliced in where each prompt's ``<image>`` was (prefix LMs); padded after
    EOS. A prompt longer than the decoder's positions allow keeps its end, at least half of
    them."""
    spec, device = model.spec, image_tokens.device
    room = _room(model, image_tokens.shape[1])
    keep = max(1, room - min(max_new_tokens, room // 2))  # the reply gets at most half
    ids, mask, at = (t.to(device) for t in _left_padded(prompts, spec.pad_token_id, keep))
    steps = max(0, min(max_new_tokens, room - ids.shape[1]))
    banned = sorted({spec.pad_token_id, spec.bos_token_id} - {spec.eos_token_id})
    cache = model.decoder.new_cache()
    extra = {"image_at": at} if splices_image(model) and image_tokens.shape[1] else {}
    new, out = ids, []
    done = torch.zeros(len(ids), dtype=torch.bool, device=device)
    for _ in range(steps):
        logits = model.decoder(new, image_tokens, attention_mask=mask, cache=cache,
                               **extra).logits[:, -1].float()
        extra = {}
        logits[:, banned] = float("-inf")
        nxt = torch.where(done, torch.full_like(done, spec.pad_token_id, dtype=torch.long),
                          logits.argmax(dim=-1))
        out.append(nxt)
        done |= nxt == spec.eos_token_id
        if done.all():
            break
        new, mask = nxt[:, None], torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
    return torch.stack(out, dim=1) if out else ids.new_zeros(len(ids), 0)


@torch.no_grad()
def replies(model: ImageTextModel, tokenizer, pixel_values: torch.Tensor | None,
            image_rows: Sequence[int], prompts: Sequence[Rendered], *,
            max_new_tokens: int = 64, batch_size: int = 32,
            show_progress: bool = False) -> list[str]:
    """One greedy reply per prompt, ``prompts[i]`` about ``pixel_values[image_rows[i]]``
    (-1: none), ``batch_size`` prompts at a time (those with an image apart from those
    without)."""
    device = model_device(model)
    texts: dict[int, str] = {}
    for with_image in (True, False):
        order = [i for i, r in enumerate(image_rows) if (r >= 0) == with_image]
        for start in chunk_starts(len(order), batch_size, "chat", show_progress and with_image):
            chunk = order[start: start + batch_size]
            if with_image:
                px = pixel_values[[image_rows[i] for i in chunk]].to(device)
                tokens = model.encode_image(px).tokens
            else:
                tokens = no_image(model, len(chunk), device)
            ids = greedy_replies(model, tokens, [prompts[i] for i in chunk], max_new_tokens)
            texts.update(zip(chunk, decode_until_eos(tokenizer, ids, model.spec.eos_token_id)))
    return [texts[i] for i in range(len(prompts))]


def reply_prompts(tokenizer, model: ImageTextModel, histories: Sequence[Turns],
                  messages: Sequence[str], with_image: Sequence[bool]) -> list[Rendered]:
    """The prompt of each message after its history (``data.chat_text.generation_prompt``)."""
    return [generation_prompt(tokenizer, model.spec.chat, h, m, w)
            for h, m, w in zip(histories, messages, with_image)]


# ---- evaluation ------------------------------------------------------------------------

def evaluate_chat(ev: Evaluation, data: EvalSet, options: ChatOptions) -> TaskResult:
    """Each held-out conversation's last reply, generated after the turns before it."""
    convs = data.conversations
    prompts = [render(ev.tokenizer, ev.model.spec.chat, c.turns[:-1]) for c in convs]
    texts = replies(ev.model, ev.tokenizer, data.images.pixels, data.conversation_rows(),
                    prompts, max_new_tokens=options.max_new_tokens,
                    batch_size=ev.cfg.batch_size, show_progress=ev.show_progress)
    refs = {i: [c.turns[-1][1]] for i, c in enumerate(convs)}
    scores = caption_scores(dict(enumerate(texts)), refs)
    normalize = TextNormalizer(strip_punctuation=True)
    exact = [normalize(t) == normalize(c.turns[-1][1]) for t, c in zip(texts, convs)]
    metrics = {**{k: scores[k] for k in CHAT_METRICS},
               "exact_match": 100 * sum(exact) / len(exact),
               "conversations": len(convs),
               "text_only": sum(c.image_path is None for c in convs)}
    protocol = {**scores.get("protocol", {}),
                "reference": "the last assistant turn of each held-out conversation",
                "decoding": "greedy, after the conversation's earlier turns",
                "max_new_tokens": options.max_new_tokens,
                "exact_match": "percent of replies equal to the reference after lowercasing "
                               "and removing punctuation"}
    lines = [{"task": "chat", "conversation_id": c.conversation_id, "image_id": c.image_id,
              "image": None if c.image_path is None else absolute(c.image_path),
              "message": c.turns[-2][1], "reply": t, "reference": c.turns[-1][1],
              "exact_match": e} for c, t, e in zip(convs, texts, exact)]
    return TaskResult({"chat": metrics}, {"chat": protocol}, lines)
