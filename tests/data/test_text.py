"""Text normalisation and the truncation check, against hand-worked cases."""

from __future__ import annotations

import pytest

from tuwen.config import TextConfig, config_from_dict
from tuwen.data.text import (
    ENGLISH_STOP_WORDS,
    TextNormalizer,
    fully_truncated,
    kept_token_count,
    normalize_whitespace,
    remove_stopwords,
    strip_punctuation,
    truncate_words,
)
from tuwen.data.tokenizer import train_tokenizer
from tuwen.errors import ConfigError


@pytest.mark.parametrize("raw, expected", [
    ("  a  dog\tand\na cat  ", "a dog and a cat"),
    ("two\u00a0birds", "two birds"),               # no-break space
    ("zero\u200bwidth", "zerowidth"),              # zero-width space is invisible, dropped
    ("bell\x07 rings", "bell rings"),              # control character
    ("", ""),
    ("   ", ""),
])
def test_normalize_whitespace(raw: str, expected: str) -> None:
    assert normalize_whitespace(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("A man riding a horse.", "A man riding a horse"),
    ("a man's hat, a woman's bag", "a mans hat a womans bag"),
    ("don\u2019t walk", "dont walk"),               # typographic apostrophe
    ("the dogs' bowl", "the dogs bowl"),            # apostrophe at a word's end: a space
    ("a t-shirt (red)", "a t shirt red"),
    ("3.5 metres, 1,000 birds!", "3.5 metres 1,000 birds"),
    ("what colour is it?", "what colour is it"),
    ("\u201cquoted\u201d \u2014 dash", "quoted dash"),  # curly quotes, em dash
    ("fish & chips + 2 $", "fish chips + 2 $"),     # & is punctuation (Po); + and $ symbols
    ("...", ""),
])
def test_strip_punctuation(raw: str, expected: str) -> None:
    assert strip_punctuation(raw) == expected


def test_remove_stopwords_keeps_what_a_picture_shows() -> None:
    assert remove_stopwords("a dog is sitting on the sofa") == "dog sitting on sofa"
    assert remove_stopwords("a dog under the sofa") == "dog under sofa"
    assert remove_stopwords("There are no cats, and two dogs.") == "no cats, two dogs."
    assert remove_stopwords("a man with a hat to the left of it") == "man with hat left"
    # only stop words: left as it was rather than emptied
    assert remove_stopwords("it is what it is") == "it is what it is"


def test_stopword_list_keeps_spatial_negation_and_number_words() -> None:
    for word in ("on", "under", "above", "below", "left", "right", "top", "behind", "no",
                 "not", "without", "with", "one", "two", "few", "all", "both", "red"):
        assert word not in ENGLISH_STOP_WORDS, word
    for word in ("a", "an", "the", "is", "are", "of", "and", "it", "this"):
        assert word in ENGLISH_STOP_WORDS


def test_truncate_words() -> None:
    assert truncate_words("one two three four", 2) == "one two"
    assert truncate_words("one  two", 5) == "one two"
    with pytest.raises(ValueError, match="max_words"):
        truncate_words("x", 0)


def test_normalizer_defaults_lowercase_and_whitespace_only() -> None:
    norm = TextNormalizer()
    assert norm("  A Red  Circle, LEFT of a square. ") == "a red circle, left of a square."
    assert norm.retrieval("A red circle") == "a red circle"  # no stop words by default


def test_normalizer_all_options() -> None:
    norm = TextNormalizer(lowercase=True, strip_punctuation=True, stopwords_for_retrieval=True,
                          max_words=4)
    text = "The Man's dog is sitting ON the red sofa."
    assert norm(text) == "the mans dog is"                 # stop words stay for the decoder
    assert norm.retrieval(text) == "mans dog sitting on"   # removed first, then the limit


def test_normalizer_keeps_case_when_asked() -> None:
    assert TextNormalizer(lowercase=False)("A  Dog") == "A Dog"


def test_normalizer_from_config() -> None:
    config = config_from_dict({"data": {"text": {"strip_punctuation": True, "max_words": 3}}})
    norm = TextNormalizer.from_config(config.data.text)
    assert norm("Hello, big World!") == "hello big world"
    assert norm("a b c d") == "a b c"
    assert TextNormalizer.from_config(TextConfig()) == TextNormalizer()
    with pytest.raises(ConfigError, match=r"data\.text\.max_words"):
        config_from_dict({"data": {"text": {"max_words": 0}}})
    with pytest.raises(ConfigError, match=r"data\.text\.stopwords: unknown key"):
        config_from_dict({"data": {"text": {"stopwords": True}}})


# --- truncation -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok():
    # A vocabulary big enough for whole words: every word below is exactly one token.
    texts = ["a red circle left of a blue square", "what colour is the circle", "yes no two"]
    return train_tokenizer(texts * 5, vocab_size=200)


def test_token_counts_are_one_per_word(tok) -> None:
    assert tok.tokenize("a red circle left of a blue square") == \
        ["a", "red", "circle", "left", "of", "a", "blue", "square"]
    assert tok.num_special_tokens_to_add(pair=False) == 2  # [CLS] ... [SEP]


def test_kept_token_count_hand_checked(tok) -> None:
    caption = "a red circle left of a blue square"  # 8 tokens
    assert kept_token_count(tok, caption, 40) == 8
    assert kept_token_count(tok, caption, 6) == 4              # 6 - [CLS] - [SEP]
    assert kept_token_count(tok, caption, 6, reserved=1) == 5  # the decoder's budget
    assert kept_token_count(tok, caption, 2) == 0
    # an answer after its question: "what colour is the circle" takes 5 of 8 positions
    assert kept_token_count(tok, "red", 8, prefix="what colour is the circle") == 1
    assert kept_token_count(tok, "red", 7, prefix="what colour is the circle") == 0


def test_fully_truncated(tok) -> None:
    assert not fully_truncated(tok, "a red circle", 4)       # 1 token survives
    assert fully_truncated(tok, "a red circle", 2)           # only [CLS] [SEP] fit
    assert fully_truncated(tok, "", 40)                      # nothing to keep
    assert fully_truncated(tok, strip_punctuation("?!"), 40)  # empty once normalised
    assert fully_truncated(tok, "two", 7, prefix="what colour is the circle")
    assert not fully_truncated(tok, "two", 8, prefix="what colour is the circle")


def test_kept_count_matches_the_tokenizers_own_truncation(tok) -> None:
    caption = "a red circle left of a blue square"
    for max_length in range(2, 12):
        ids = tok(caption, truncation=True, max_length=max_length)["input_ids"]
        assert kept_token_count(tok, caption, max_length) == len(ids) - 2
