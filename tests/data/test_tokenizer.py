"""The WordPiece tokenizer: special ids, save/load, decoding back to text, determinism."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuwen.data.tokenizer import (
    SPECIAL_TOKENS,
    decode_text,
    save_tokenizer,
    train_tokenizer,
)
from tuwen.errors import TuwenError
from tuwen.models.image_text_model import saved_tokenizer

CORPUS = [
    "a large red circle and a small blue square",
    "a red circle, a blue square",
    "A small green triangle is above a large yellow star.",
    "two blue squares and one red circle",
    "the purple cross is left of the green circle",
    "a tiny orange star below a big red triangle",
    "What colour is the circle?",
    "How many squares are there?",
    "is there a triangle in the picture?",
    "three yellow circles, one green square",
    "the square is to the right of the star",
    "a blue circle above a red square",
    "a large green star and a small purple circle",
    "there are no triangles",
    "which shape is red?",
    "the cross is blue, the star is yellow",
    "a small red square next to a large blue circle",
    "one circle and two triangles",
    "what shape is above the square?",
    "a green triangle, a red star and a blue cross",
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, vocab_size=200)


def test_special_token_ids(tok) -> None:
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(7))
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id,
            tok.bos_token_id, tok.eos_token_id, tok.mask_token_id) == (0, 1, 2, 3, 4, 5, 6)
    assert tok.model_max_length == 128


def test_encoding_wraps_in_cls_sep(tok) -> None:
    ids = tok("a red circle")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.convert_ids_to_tokens(ids[1:-1]) == ["a", "red", "circle"]
    assert tok.unk_token_id not in ids


def test_decode_round_trip(tok) -> None:
    for text in ["a large red circle and a small blue square", "a red circle, a blue square"]:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert decode_text(tok, ids) == text
    # Lowercased by the normaliser; question mark attached again
    assert decode_text(tok, tok("What colour is the circle?")["input_ids"]) \
        == "what colour is the circle?"


def test_decode_text_tidies_punctuation_bert_splits_off(tok) -> None:
    ids = tok("a red-blue star; (big) square: it's", add_special_tokens=False)["input_ids"]
    # Characters never seen in training decode to nothing, so compare on known ones only
    text = decode_text(tok, ids)
    assert " ;" not in text and " :" not in text and "( " not in text and " )" not in text
    assert "red" in text and "star" in text


def test_decode_text_drops_decoder_special_tokens(tok) -> None:
    body = tok("a red circle", add_special_tokens=False)["input_ids"]
    ids = [tok.bos_token_id, *body, tok.eos_token_id, tok.pad_token_id, tok.pad_token_id]
    assert decode_text(tok, ids) == "a red circle"


def test_save_load_round_trip(tok, tmp_path: Path) -> None:
    save_tokenizer(tok, tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    loaded = saved_tokenizer(tmp_path / "tok")
    for text in CORPUS:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.get_vocab() == tok.get_vocab()
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 4, 5)
    assert loaded.model_max_length == tok.model_max_length


def test_training_is_deterministic() -> None:
    # tokenizers' trainer alone learns a different vocab on most runs (hash-map order)
    vocabs = {tuple(sorted(train_tokenizer(CORPUS, vocab_size=120).get_vocab().items()))
              for _ in range(5)}
    assert len(vocabs) == 1


def test_vocab_size_and_min_frequency_are_honoured() -> None:
    small = train_tokenizer(CORPUS, vocab_size=80)
    large = train_tokenizer(CORPUS, vocab_size=300)
    assert len(small) <= 80 < len(large)
    rare = train_tokenizer(CORPUS, vocab_size=300, min_frequency=100)
    assert "circle" not in rare.get_vocab()  # no merge is frequent enough


def test_empty_corpus_is_an_error() -> None:
    with pytest.raises(ValueError, match="non-empty text"):
        train_tokenizer(["", "   "])


def test_load_errors_name_the_folder(tok, tmp_path: Path) -> None:
    assert saved_tokenizer(tmp_path / "nowhere") is None  # no tokenizer saved there
    save_tokenizer(tok, tmp_path / "broken")
    (tmp_path / "broken" / "tokenizer.json").write_text('{"model": ')
    with pytest.raises(TuwenError, match="cannot load the saved tokenizer") as err:
        saved_tokenizer(tmp_path / "broken")
    assert str(tmp_path / "broken") in str(err.value)
    assert "\n" not in str(err.value)


def test_training_text_includes_the_answers_generative_vqa_writes(tiny_shapes) -> None:
    """Shapes count answers are digits ("2") that no caption or question contains."""
    from tuwen.config import load_config
    from tuwen.data.prepare import build_tokenizer, read_split

    config = load_config("configs/shapes.yaml", [f"data.root={tiny_shapes}"])
    train = read_split(config.data, "train")
    answers = {q.multiple_choice_answer for q in train.questions}
    assert {"0", "1", "2"} <= answers
    tok = build_tokenizer(train, vocab_size=200)
    for answer in sorted(answers):
        assert tok.unk_token_id not in tok(answer, add_special_tokens=False)["input_ids"], answer
