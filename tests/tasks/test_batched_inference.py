"""The tasks' batched inference: the same outputs as one predict_step call, whatever the
batch size, each question on its own image."""

import pytest
import torch

from tiny import tiny_spec
from tuwen.data.answers import AnswerVocab
from tuwen.data.text import TextNormalizer
from tuwen.data.tokenizer import decode_text, train_tokenizer
from tuwen.errors import TuwenError
from tuwen.models.image_text_model import build_model
from tuwen.tasks import captioning, retrieval, vqa
from tuwen.tasks.batching import decode_until_eos

QUESTIONS = ["is the circle red", "is the square blue", "is the circle green",
             "is the square red"]
CAPTIONS = ["a red circle", "a blue square above a green circle", "two shapes"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(QUESTIONS + CAPTIONS, vocab_size=60)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    spec = tiny_spec()
    spec.vocab_size = len(tokenizer)
    model = build_model(spec).eval()
    with torch.no_grad():  # larger weights: a fresh tiny model says the same of every image
        for p in model.parameters():
            p.mul_(3.0)
    return model


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_decode_until_eos_cuts_each_row_at_its_first_eos(tokenizer):
    ids = torch.tensor([[7, 8, 5, 9, 5], [7, 8, 9, 10, 11]])
    assert decode_until_eos(tokenizer, ids, eos_token_id=5) == [
        decode_text(tokenizer, [7, 8]), decode_text(tokenizer, [7, 8, 9, 10, 11])]


def test_generate_captions_is_predict_step_decoded_at_any_batch_size(model, tokenizer, pixels):
    ids = captioning.predict_step(model, pixels, max_new_tokens=6)
    expected = decode_until_eos(tokenizer, ids, model.spec.eos_token_id)
    assert len(set(expected)) > 1  # the images get different captions
    for batch_size in (2, 5):
        assert captioning.generate_captions(model, tokenizer, pixels, batch_size=batch_size,
                                            max_new_tokens=6) == expected


@torch.no_grad()
def test_retrieval_features_equal_the_model_heads(model, tokenizer, pixels):
    ids, mask = retrieval.tokenize_texts(model, tokenizer, CAPTIONS, max_length=16)
    feats = retrieval.retrieval_features(model, pixels, ids, mask, batch_size=2)
    image = model.encode_image(pixels)
    text = model.encode_text(ids, mask)
    assert torch.allclose(feats.image_embeds, model.itc_head.embed_image(image.pooled),
                          atol=1e-5)
    assert torch.allclose(feats.text_embeds, model.itc_head.embed_text(text.pooled), atol=1e-5)
    assert torch.allclose(feats.image_tokens, image.tokens, atol=1e-5)
    assert torch.equal(feats.text.attention_mask, mask)
    assert feats.similarity().shape == (len(pixels), len(CAPTIONS))


def _vocab() -> AnswerVocab:
    return AnswerVocab(["yes", "no", "2", "3", "red", "blue", "green"])


def test_answer_questions_asks_each_question_of_its_image(model, tokenizer, pixels,
                                                          monkeypatch):
    rows = [4, 0, 4, 2]
    normalize = TextNormalizer.from_config(model.spec.text)
    enc = tokenizer([normalize(q) for q in QUESTIONS], padding="longest", return_tensors="pt")
    pred = vqa.predict_step(model, pixels[rows], enc["input_ids"], enc["attention_mask"])
    expected = [_vocab().answer(i) for i in pred.tolist()]
    answers = vqa.answer_questions(model, tokenizer, _vocab(), pixels, rows, QUESTIONS,
                                   max_length=16, batch_size=3)
    assert answers == expected
    reverse = vqa.answer_questions(model, tokenizer, _vocab(), pixels, rows[::-1],
                                   QUESTIONS[::-1], max_length=16, batch_size=1)
    assert reverse == expected[::-1]
    seen = []  # the images each batch was answered on
    predict = vqa.predict_step
    monkeypatch.setattr(vqa, "predict_step", lambda model, px, *args: (
        seen.append(px), predict(model, px, *args))[1])
    vqa.answer_questions(model, tokenizer, _vocab(), pixels, rows, QUESTIONS, max_length=16,
                         batch_size=3)
    assert [len(px) for px in seen] == [3, 1]
    assert torch.equal(torch.cat(seen), pixels[rows])


def test_a_classifier_without_answer_vocabulary_is_a_clear_error(model, tokenizer, pixels):
    with pytest.raises(TuwenError, match="no answer vocabulary"):
        vqa.answer_questions(model, tokenizer, None, pixels, [0], QUESTIONS[:1], max_length=16)
