"""Generative VQA as text: the prompt a question becomes, and the answer the decoder learns.

    prompt = [BOS] "question: <question> answer:"       (model.vqa.mode: generate)
    target = " <answer>" [EOS]

With an instruct LM's chat template (``chat``, config.chat.ChatFormat) the question is the
user's turn and the answer the assistant's reply, closed by the template's end of turn:

    prompt = <before> "<question>" <after>
    target = "<answer>" <end of turn>

Training feeds prompt + target with the labels on the target only; inference feeds the
prompt (left-padded in a batch) and generates the target. Both build the prompt with
``prompt_ids``, so they always agree. The answer is tokenized as the continuation of the
prompt (BPE and SentencePiece tokenizers mark the space before a word).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tuwen.config.chat import ChatFormat

PROMPT = "question: {question} answer:"
ANSWER_ROOM = 8  # tokens a prompt always leaves free for the answer within max_length


def _ids(tok, texts: Sequence[str]) -> list[list[int]]:
    return tok(list(texts), add_special_tokens=False)["input_ids"]


def continuation_ids(tok, prompts: Sequence[str], texts: Sequence[str],
                     sep: str = "") -> list[list[int]]:
    """Tokens of each text as it continues its prompt (``prompt + sep + text`` tokenized
    whole, the prompt's tokens removed); a text the tokenizer merges across the boundary is
    tokenized alone (``sep + text``)."""
    alone = _ids(tok, prompts)
    joined = _ids(tok, [f"{p}{sep}{t}" for p, t in zip(prompts, texts)])
    out = []
    for p, j, t in zip(alone, joined, texts):
        out.append(j[len(p):] if j[: len(p)] == p else _ids(tok, [sep + t])[0])
    return out


def end_id(tok, chat: ChatFormat | None) -> int:
    """The token that ends a target: EOS, or the chat template's end of turn."""
    return tok.eos_token_id if chat is None else chat.end_token_id


def prompt_ids(tok, questions: Sequence[str], max_length: int,
               chat: ChatFormat | None = None) -> list[list[int]]:
    """[BOS] + the prompt's tokens, or the chat prompt's; over-long questions lose their
    beginning."""
    keep = max(1, max_length - ANSWER_ROOM - 1)
    if chat is not None:
        return _ids(tok, [chat.prompt(_last_tokens(tok, q.strip(), keep)) for q in questions])
    ids = _ids(tok, [PROMPT.format(question=q.strip()) for q in questions])
    return [[tok.bos_token_id, *row[-keep:]] for row in ids]


def _last_tokens(tok, text: str, keep: int) -> str:
    ids = _ids(tok, [text])[0]
    return text if len(ids) <= keep else tok.decode(ids[-keep:]).strip()


def answer_ids(tok, questions: Sequence[str], answers: Sequence[str],
               chat: ChatFormat | None = None) -> list[list[int]]:
    """Tokens of each answer as the prompt's continuation, without EOS."""
    answers = [a.strip() for a in answers]
    if chat is not None:  # the reply starts right after the assistant's header
        return continuation_ids(tok, [chat.prompt(q.strip()) for q in questions], answers)
    prompts = [PROMPT.format(question=q.strip()) for q in questions]
    return continuation_ids(tok, prompts, answers, sep=" ")


def answer_sequences(tok, questions: Sequence[str], answers: Sequence[str],
                     max_length: int,
                     chat: ChatFormat | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher forcing: (input_ids, labels), right-padded, -100 on prompt and padding."""
    room = max_length + (0 if chat is None else chat.extra_length)
    rows = []
    for prompt, answer in zip(prompt_ids(tok, questions, max_length, chat),
                              answer_ids(tok, questions, answers, chat)):
        rows.append(teacher_forcing(prompt, answer[: room - len(prompt)], end_id(tok, chat)))
    return right_padded(rows, tok.pad_token_id)


def teacher_forcing(prompt: list[int], target: list[int],
                    end: int) -> tuple[list[int], list[int]]:
    """prompt + target + end  ->  (inputs, labels): the labels cover the target and the end
    token only; the end token is a label, never an input."""
    seq = [*prompt, *target, end]
    return seq[:-1], [-100] * (len(prompt) - 1) + [*target, end]


def right_padded(rows: list[tuple[list[int], list[int]]],
                 pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) rows -> (B, T) tensors, padded with ``pad`` and -100."""
    width = max(len(inputs) for inputs, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (inputs, target) in enumerate(rows):
        input_ids[i, : len(inputs)] = torch.tensor(inputs)
        labels[i, : len(target)] = torch.tensor(target)
    return input_ids, labels


def left_padded_prompts(tok, questions: Sequence[str], max_length: int,
                        chat: ChatFormat | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts for batched generation: (ids, mask), padded on the left so that every row's
    next token comes at the same column."""
    rows = prompt_ids(tok, questions, max_length, chat)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask
