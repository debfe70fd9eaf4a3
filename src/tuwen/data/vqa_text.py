"""Generative VQA as text: the prompt a question becomes, and the answer the decoder learns.

    prompt = [BOS] "question: <question> answer:"       (model.vqa.mode: generate)
    target = " <answer>" [EOS]

Training feeds prompt + target with the labels on the target only; inference feeds the
prompt (left-padded in a batch) and generates the target. Both build the prompt with
``prompt_ids``, so they always agree. The answer is tokenized as the continuation of the
prompt (BPE and SentencePiece tokenizers mark the space before a word).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

PROMPT = "question: {question} answer:"
ANSWER_ROOM = 8  # tokens a prompt always leaves free for the answer within max_length


def prompt_ids(tok, questions: Sequence[str], max_length: int) -> list[list[int]]:
    """[BOS] + the prompt's tokens; over-long questions lose their beginning."""
    texts = [PROMPT.format(question=q.strip()) for q in questions]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    keep = max(1, max_length - ANSWER_ROOM - 1)
    return [[tok.bos_token_id, *row[-keep:]] for row in ids]


def answer_ids(tok, questions: Sequence[str], answers: Sequence[str]) -> list[list[int]]:
    """Tokens of each answer as the prompt's continuation, without EOS."""
    prompts = [PROMPT.format(question=q.strip()) for q in questions]
    alone = tok(prompts, add_special_tokens=False)["input_ids"]
    joined = tok([f"{p} {a.strip()}" for p, a in zip(prompts, answers)],
                 add_special_tokens=False)["input_ids"]
    out = []
    for p, j, a in zip(alone, joined, answers):
        if j[: len(p)] == p:
            out.append(j[len(p):])
        else:  # the tokenizer merged across the boundary: tokenize the answer alone
            out.append(tok(" " + a.strip(), add_special_tokens=False)["input_ids"])
    return out


def answer_sequences(tok, questions: Sequence[str], answers: Sequence[str],
                     max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher forcing: (input_ids, labels), right-padded, -100 on prompt and padding."""
    rows = []
    for prompt, answer in zip(prompt_ids(tok, questions, max_length),
                              answer_ids(tok, questions, answers)):
        target = [*answer[: max_length - len(prompt)], tok.eos_token_id]
        seq = prompt + target
        rows.append((seq[:-1], [-100] * (len(prompt) - 1) + target))
    width = max(len(inputs) for inputs, _ in rows)
    input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (inputs, target) in enumerate(rows):
        input_ids[i, : len(inputs)] = torch.tensor(inputs)
        labels[i, : len(target)] = torch.tensor(target)
    return input_ids, labels


def left_padded_prompts(tok, questions: Sequence[str],
                        max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts for batched generation: (ids, mask), padded on the left so that every row's
    next token comes at the same column."""
    rows = prompt_ids(tok, questions, max_length)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask
