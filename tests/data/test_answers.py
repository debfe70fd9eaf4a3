"""VQA answer normalisation (official vqaEval.py rules) and the answer vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuwen.data.answers import (
    AnswerVocab,
    normalize_answer,
    process_digit_article,
    process_punctuation,
)
from tuwen.errors import DataError, TuwenError


@pytest.mark.parametrize(("raw", "expected"), [
    # number words -> digits ("none" counts as zero)
    ("two", "2"), ("Ten", "10"), ("none", "0"), ("zero", "0"), ("eleven", "eleven"),
    ("one-two", "1 2"),
    # articles a / an / the are dropped, only as whole words
    ("the dog", "dog"), ("A Red Car", "red car"), ("an apple", "apple"), ("a", ""),
    ("theater", "theater"),
    # contractions get their apostrophe back; capitalised table keys never match
    ("dont", "don't"), ("Dont", "don't"), ("isnt", "isn't"), ("oclock", "o'clock"),
    ("don't", "don't"), ("Im", "im"),
    # periods: stripped unless a digit follows
    ("yes.", "yes"), ("Yes.", "yes"), ("3.5", "3.5"), (".5", ".5"), ("1.", "1"),
    ("e.g.", "eg"), ("ten.", "10"),
    # digit-comma-digit anywhere: every punctuation mark is deleted, not spaced
    ("1,000", "1000"), ("1,000 dogs, 2", "1000 dogs 2"),
    # a mark touching a space is deleted; one inside a word becomes a space
    ("red, blue", "red blue"), ("red,blue", "red blue"), ("x-ray", "x ray"),
    ("hot-dog, fries", "hot dog fries"), ("50/50", "50 50"), ("what?", "what"),
    ('"quoted"', "quoted"), ("(a) b", "b"), ("@home", "home"),
    # whitespace collapses
    ("  two  dogs ", "2 dogs"), ("", ""),
])
def test_normalize_answer_official_rules(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_steps_are_exported_separately() -> None:
    assert process_punctuation("Yes, two.") == "Yes two"
    assert process_digit_article("Yes two") == "yes 2"
    assert normalize_answer("Yes, two.") == "yes 2"


def test_period_strip_removes_at_most_32_periods() -> None:
    # vqaEval.py passes re.UNICODE (32) as the `count` of periodStrip.sub.
    assert process_punctuation("." * 40) == "." * 8


def test_build_keeps_top_k_by_count_then_alphabet() -> None:
    answers = ["yes"] * 5 + ["no"] * 3 + ["Two"] * 2 + ["2"] + ["red", "blue", "blue", "red"]
    vocab = AnswerVocab.build(answers, top_k=4)
    # "2" and "Two" merge into "2" (3 votes) and tie with "no"; "blue"/"red" tie at 2.
    assert vocab.answers == ("yes", "2", "no", "blue")
    assert len(vocab) == 4


def test_index_normalises_and_answer_inverts() -> None:
    vocab = AnswerVocab(["yes", "2", "red car"])
    assert vocab.index("Yes.") == 0
    assert vocab.index("two") == 1
    assert vocab.index("the red car") == 2
    assert vocab.index("purple") is None
    assert vocab.answer(1) == "2"
    assert "YES" in vocab and "maybe" not in vocab
    with pytest.raises(IndexError):
        vocab.answer(3)


def test_soft_scores_follow_the_count_over_three_rule() -> None:
    vocab = AnswerVocab(["red", "2", "blue"])
    annotators = ["red", "Red", "red.", "red", "two", "2", "blue", "green", "green", "green"]
    # red x4 -> 1.0, "two"/"2" -> 2 votes -> 2/3, blue x1 -> 1/3, green not a class.
    assert vocab.soft_scores(annotators) == pytest.approx({0: 1.0, 1: 2 / 3, 2: 1 / 3})


def test_coverage_is_the_share_of_answers_in_vocab() -> None:
    vocab = AnswerVocab(["yes", "no"])
    assert vocab.coverage(["yes", "No.", "maybe", "yes"]) == 0.75
    with pytest.raises(TuwenError):
        vocab.coverage([])


def test_build_rejects_non_positive_top_k() -> None:
    with pytest.raises(TuwenError, match="top_k"):
        AnswerVocab.build(["yes"], top_k=0)


def test_save_load_round_trip(tmp_path: Path) -> None:
    vocab = AnswerVocab(["yes", "no", "café", "don't"])
    path = tmp_path / "model" / "answer_vocab.json"
    vocab.save(path)
    assert json.loads(path.read_text(encoding="utf-8")) == {"answers": list(vocab.answers)}
    assert AnswerVocab.load(path) == vocab


@pytest.mark.parametrize(("content", "problem"), [
    ('{"answers": ["yes", ', "not valid JSON"),
    ('["yes", "no"]', "expected an object"),
    ('{"answers": ["yes", 3]}', "answer 1 is int"),
    ('{"answers": ["yes", "yes"]}', "duplicate answer 'yes'"),
])
def test_load_malformed_file_names_the_file(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "answer_vocab.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=problem) as err:
        AnswerVocab.load(path)
    assert str(path) in str(err.value)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        AnswerVocab.load(tmp_path / "nope.json")
