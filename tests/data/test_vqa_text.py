"""Generative VQA text: prompts, answer targets, loss only on the answer."""

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tuwen.data.tokenizer import train_tokenizer
from tuwen.data.vqa_text import ANSWER_ROOM, answer_sequences, left_padded_prompts, prompt_ids

TEXTS = ["question: what colour is the circle? answer: red", "how many shapes? two",
         "question: is there a square? answer: yes"]


def wordpiece():
    return train_tokenizer(TEXTS, vocab_size=120)


def test_sequences_label_only_the_answer_and_eos():
    tok = wordpiece()
    ids, labels = answer_sequences(tok, ["what colour is the circle?", "how many shapes?"],
                                   ["red", "two"], max_length=24)
    prompt = [tok.bos_token_id] + tok("question: what colour is the circle? answer:",
                                      add_special_tokens=False)["input_ids"]
    red, two = tok.convert_tokens_to_ids(["red", "two"])
    eos, pad = tok.eos_token_id, tok.pad_token_id
    assert ids[0].tolist() == [*prompt, red]                   # EOS is a target, not an input
    assert labels[0].tolist() == [-100] * (len(prompt) - 1) + [red, eos]
    short = [tok.bos_token_id] + tok("question: how many shapes? answer:",
                                     add_special_tokens=False)["input_ids"]
    width = len(prompt) + 1
    assert ids[1].tolist() == [*short, two] + [pad] * (width - len(short) - 1)
    assert labels[1].tolist() == ([-100] * (len(short) - 1) + [two, eos]
                                  + [-100] * (width - len(short) - 1))


def test_prompts_are_left_padded_and_match_the_training_prompt():
    tok = wordpiece()
    questions = ["what colour is the circle?", "how many shapes?"]
    ids, mask = left_padded_prompts(tok, questions, max_length=24)
    rows = prompt_ids(tok, questions, 24)
    assert ids.shape == mask.shape == (2, len(rows[0]))
    assert ids[0].tolist() == rows[0] and mask[0].all()
    pad = len(rows[0]) - len(rows[1])
    assert ids[1, pad:].tolist() == rows[1] and mask[1].tolist() == [0] * pad + [1] * len(rows[1])
    train_ids, _ = answer_sequences(tok, questions[:1], ["red"], 24)
    assert train_ids[0, : len(rows[0])].tolist() == rows[0]


def test_long_questions_keep_room_for_the_answer():
    tok = wordpiece()
    question = " ".join(["what colour is the circle?"] * 10)
    ids, labels = answer_sequences(tok, [question], ["red"], max_length=16)
    assert ids.shape[1] <= 16
    assert len(prompt_ids(tok, [question], 16)[0]) == 16 - ANSWER_ROOM
    red = tok.convert_tokens_to_ids("red")
    assert labels[0, -2:].tolist() == [red, tok.eos_token_id]
    assert ids[0, 0].item() == tok.bos_token_id  # the question's beginning goes, BOS stays


def test_byte_level_answers_are_the_prompts_continuation():
    """GPT-2-style BPE marks the space before a word ("Ġred"): the target must be the token
    the LM would continue the prompt with, not "red" tokenised alone."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    _, labels = answer_sequences(tok, ["what colour is the circle?"], ["red"], 24)
    target = [t for t in labels[0].tolist() if t != -100]
    assert tok.convert_ids_to_tokens(target[:-1]) == tok.convert_ids_to_tokens(
        tok(" red", add_special_tokens=False)["input_ids"])
    assert tok.decode(target[:-1]).strip() == "red" and target[-1] == tok.eos_token_id
    assert torch.is_tensor(labels)
