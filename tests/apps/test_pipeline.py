"""The Pipeline on a tiny trained model: the same outputs as ``tuwen eval``, every input kind,
and clear errors."""

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

import tuwen
from tuwen.apps.images import ImageLimits, ImageRejected, decode_image
from tuwen.apps.pipeline import Pipeline, model_fingerprint
from tuwen.errors import TuwenError


def by_task(predictions, task):
    return [p for p in predictions if p["task"] == task]


def test_captions_equal_eval_predictions(pipeline, predictions):
    rows = by_task(predictions, "caption")
    captions = pipeline.caption([r["image"] for r in rows], decoding="beam", beam_size=3,
                                max_length=12)  # tiny_overrides: eval.max_new_tokens=12
    assert captions == [r["caption"] for r in rows]


def test_answers_equal_eval_predictions_with_ranked_alternatives(pipeline, predictions):
    rows = by_task(predictions, "vqa")[:24]
    answers = pipeline.answer([r["image"] for r in rows], [r["question"] for r in rows])
    assert [a.text for a in answers] == [r["answer"] for r in rows]
    for a in answers:
        probs = [p for _, p in a.alternatives]
        assert len(a.alternatives) == 5 and a.alternatives[0][0] == a.text
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


def test_embeddings_rank_texts_as_eval_does(pipeline, predictions):
    rows = [r for r in by_task(predictions, "retrieval") if r["direction"] == "i2t"]
    texts = sorted({t for p in by_task(predictions, "retrieval") if p["direction"] == "t2i"
                    for t in [p["query"]]})
    images, queries = pipeline.embed_images([r["image"] for r in rows]), pipeline.embed_texts(texts)
    assert images.dtype == np.float32 and images.shape == (len(rows), pipeline.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1, atol=1e-5)
    sim = images @ queries.T
    for row, r in zip(sim, rows):  # eval's top 5 texts; ties aside, in its order
        assert {texts[j] for j in np.argsort(-row, kind="stable")[:5]} == set(r["top"])


def test_paths_pil_images_and_bytes_give_the_same_result(pipeline, tiny_shapes):
    path = sorted((tiny_shapes / "images").glob("*.png"))[0]
    data = path.read_bytes()
    pil = Image.open(io.BytesIO(data))
    embeds = pipeline.embed_images([path, str(path), data, pil])
    np.testing.assert_allclose(embeds, np.repeat(embeds[:1], 4, axis=0), atol=1e-6)


def test_batches_of_any_size_give_the_same_result(pipeline, tiny_shapes):
    paths = sorted((tiny_shapes / "images").glob("*.png"))[:5]
    whole = pipeline.embed_images(paths)
    small = Pipeline(pipeline.model, pipeline.tokenizer, pipeline.vocab, pipeline.transform,
                     batch_size=2)
    np.testing.assert_allclose(small.embed_images(paths), whole, atol=1e-5)


def test_score_pairs_a_caption_above_another_images_caption(pipeline, predictions):
    rows = by_task(predictions, "caption")[:2]
    images = [rows[0]["image"], rows[0]["image"]]
    scores = pipeline.score(images, [rows[0]["references"][0], rows[0]["references"][0]])
    assert scores[0] == scores[1] and -1 <= scores[0].itc <= 1 and 0 <= scores[0].itm <= 1
    embeds = pipeline.embed_images(images[:1]) @ pipeline.embed_texts(
        [rows[0]["references"][0]]).T
    assert scores[0].itc == pytest.approx(float(embeds[0, 0]), abs=1e-5)


def test_explain_gives_a_map_per_caption_token(pipeline, predictions):
    row = by_task(predictions, "caption")[0]
    maps = pipeline.explain(row["image"], "A red circle")
    assert maps.text == "a red circle" and len(maps.tokens) == maps.maps.shape[0] >= 3
    assert maps.maps.shape[1:] == maps.grid
    np.testing.assert_allclose(maps.maps.sum(axis=(1, 2)), 1, atol=1e-4)  # softmax over patches
    generated = pipeline.explain(row["image"])  # the model's own (greedy) caption
    assert generated.tokens and generated.source == "decoder"


def test_from_pretrained_device_dtype_and_facade(trained_run):
    pipe = tuwen.Pipeline.from_pretrained(trained_run / "model", device="cpu", dtype="bf16")
    assert pipe.dtype == torch.bfloat16 and pipe.device.type == "cpu"
    assert pipe.model_id == model_fingerprint(trained_run / "model") and len(pipe.model_id) == 16
    with pytest.raises(TuwenError, match="dtype 'int8'"):
        Pipeline.from_pretrained(trained_run / "model", dtype="int8")


def test_mismatched_inputs_are_clear_errors(pipeline, tiny_shapes, tmp_path):
    path = sorted((tiny_shapes / "images").glob("*.png"))[0]
    with pytest.raises(TuwenError, match="2 images but 1 questions"):
        pipeline.answer([path, path], ["what?"])
    assert pipeline.caption([]) == [] and pipeline.embed_texts([]).shape == (0, 16)
    with pytest.raises(TuwenError, match="no images given"):
        pipeline.pixels([])
    with pytest.raises(TuwenError, match="not found"):
        pipeline.caption([tmp_path / "missing.png"])


def png(width, height, noise=False) -> bytes:
    """A PNG of one colour, or of noise (kilobytes, so a cut one lacks pixel data)."""
    buf = io.BytesIO()
    image = Image.frombytes("RGB", (width, height), random.Random(0).randbytes(
        width * height * 3)) if noise else Image.new("RGB", (width, height), (200, 10, 10))
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"%PDF-1.4 not an image", "not an image of an accepted type"),
    (png(64, 64, noise=True)[:2000], "truncated or corrupt"),
    (png(3000, 3000), "3000 x 3000 pixels is more than the limit"),
])
def test_bad_image_bytes_are_refused_with_a_reason(data, message):
    limits = ImageLimits(max_pixels=4_000_000)
    with pytest.raises(ImageRejected, match=message):
        decode_image(data, limits, name="upload")


def test_image_type_is_decided_by_content_not_name():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="TIFF")  # a real image, of a refused type
    with pytest.raises(ImageRejected, match="accepted type"):
        decode_image(buf.getvalue())
    assert decode_image(png(8, 8)).size == (8, 8)
    with pytest.raises(ImageRejected, match="more than the limit of 100"):
        decode_image(png(8, 8, noise=True), ImageLimits(max_bytes=100))
