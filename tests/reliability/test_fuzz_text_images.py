"""Tokenizer, text normalisation, the VQA answer normaliser, caption metrics and image
decoding on arbitrary input: no exception but tuwen's own, values in range."""

import io
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tuwen.data.answers import normalize_answer
from tuwen.data.images import ImageTransform, load_image
from tuwen.data.text import TextNormalizer
from tuwen.data.tokenizer import decode_text, train_tokenizer
from tuwen.errors import TuwenError
from tuwen.tasks.metrics import caption_metrics
from tuwen.tasks.metrics.caption_metrics import caption_scores
from tuwen.tasks.metrics.ptb_tokenizer import ptb_tokenize
from tuwen.tasks.metrics.vqa_accuracy import question_accuracy

TOKENIZER = train_tokenizer(["a red circle left of a blue square", "what colour is it?"] * 4,
                            vocab_size=100)
NORMALIZERS = [TextNormalizer(), TextNormalizer(strip_punctuation=True, max_words=5,
                                                stopwords_for_retrieval=True)]
TRANSFORM = ImageTransform(16)


@given(st.text())
def test_text_normalisation_on_any_unicode(text):
    for normalize in NORMALIZERS:
        out, query = normalize(text), normalize.retrieval(text)
        assert isinstance(out, str) and isinstance(query, str)
        assert normalize(out) == out  # idempotent


@given(st.text())
def test_tokenizer_round_trip_on_any_unicode(text):
    ids = TOKENIZER(text)["input_ids"]
    assert all(0 <= i < len(TOKENIZER) for i in ids)
    assert isinstance(decode_text(TOKENIZER, ids), str)


@given(st.text(), st.lists(st.text(max_size=20), min_size=1, max_size=10))
def test_vqa_answer_normaliser_and_accuracy_on_any_strings(prediction, answers):
    assert isinstance(normalize_answer(prediction), str)
    accuracy = question_accuracy(prediction, [{"answer": a, "answer_id": i}
                                              for i, a in enumerate(answers)])
    assert 0.0 <= accuracy <= 1.0


@given(st.text())
def test_ptb_tokenizer_on_any_unicode(text):
    assert "\n" not in ptb_tokenize(text)


SLOW = settings.default.max_examples >= 10_000


# each example scores a small corpus (BLEU, ROUGE-L, CIDEr): 50 by default, all in the slow run

@settings(max_examples=settings.default.max_examples if SLOW else 50)
@given(st.lists(st.tuples(st.text(max_size=40), st.lists(st.text(max_size=40), min_size=1,
                                                         max_size=3)), min_size=1, max_size=4))
def test_caption_metrics_on_any_strings(pairs):
    predictions = {i: p for i, (p, _) in enumerate(pairs)}
    references = {i: refs for i, (_, refs) in enumerate(pairs)}
    with pytest.MonkeyPatch.context() as mp:  # METEOR needs a JVM per call: too slow here
        mp.setattr(caption_metrics.shutil, "which", lambda name: None)
        scores = caption_scores(predictions, references)
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l"):
        assert 0.0 <= scores[key] <= 1.0 + 1e-9, (key, scores[key])
    assert math.isfinite(scores["cider"]) and scores["cider"] >= 0


def read_bytes(data: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.img"
        path.write_bytes(data)
        try:
            return load_image(path)
        except TuwenError as err:
            assert tmp in str(err) and "\n" not in str(err)
            return None


def encoded(mode: str, size: tuple[int, int], fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format=fmt)
    return buf.getvalue()


VALID = [encoded("RGB", (8, 8), "PNG"), encoded("RGB", (8, 8), "JPEG"),
         encoded("P", (8, 8), "GIF"), encoded("RGBA", (8, 8), "WEBP")]


@given(st.one_of(st.binary(max_size=300),
                 st.tuples(st.sampled_from(VALID), st.floats(0, 1)).map(
                     lambda v: v[0][:int(len(v[0]) * v[1])])))
def test_image_decoding_on_random_and_truncated_bytes(data):
    image = read_bytes(data)
    if image is not None:
        assert image.mode == "RGB" and TRANSFORM(image).shape == (3, 16, 16)


MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA",
         "RGBX", "RGBa", "La", "I;16", "I;16L", "I;16B", "I;16N"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [(1, 10_000), (10_000, 1), (1, 1), (3, 2)])
def test_every_pil_mode_and_extreme_shape_gives_a_finite_tensor(mode, size):
    image = Image.new(mode, size)
    pixels = TRANSFORM(image)
    assert pixels.shape == (3, 16, 16) and bool(np.isfinite(pixels.numpy()).all())


@pytest.mark.parametrize("size", [(0, 0), (0, 5), (5, 0)])
def test_a_zero_size_image_is_a_tuwen_error(size):
    with pytest.raises(TuwenError, match="0 x|empty|zero"):
        TRANSFORM(Image.new("RGB", size))
