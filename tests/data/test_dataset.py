from pathlib import Path

import pytest
import torch

from tiny import task_collator
from tuwen.data.answers import AnswerVocab
from tuwen.data.dataset import (
    EpochBatchSampler,
    JointDataset,
    caption_image_counts,
    join_by_image,
)
from tuwen.data.images import ImageTransform
from tuwen.data.prepare import SplitData
from tuwen.data.records import ImageCaptions, VQAItem
from tuwen.data.text import TextNormalizer
from tuwen.data.tokenizer import train_tokenizer


def make_png(path: Path, colour=(255, 0, 0)) -> Path:
    from PIL import Image

    Image.new("RGB", (16, 16), colour).save(path)
    return path


def records(tmp_path):
    a, b = make_png(tmp_path / "a.png"), make_png(tmp_path / "b.png", (0, 0, 255))
    caps = [ImageCaptions(1, a, "train", ("a red square", "red thing", "a square")),
            ImageCaptions(2, b, "train", ("a blue square",))]
    q = VQAItem(7, 1, a, "what colour is it?", ("red",) * 9 + ("Red.",), "red", "colour", "other")
    q_only = VQAItem(8, 3, make_png(tmp_path / "c.png"), "is there a square?", ("yes",) * 10,
                     "yes", "exists", "yes/no")
    return caps, [q, q_only]


def test_join_groups_by_image_file(tmp_path):
    caps, qs = records(tmp_path)
    examples = join_by_image(caps, qs)
    assert [len(e.captions) for e in examples] == [3, 1, 0]
    assert [len(e.questions) for e in examples] == [1, 0, 1]


def test_draws_are_seeded_by_epoch_and_index(tmp_path):
    caps, qs = records(tmp_path)
    ds = JointDataset(join_by_image(caps, qs), ImageTransform(16), seed=0, captions_per_image=2)
    first = ds[0]["captions"]
    assert len(first) == 2 and len(set(first)) == 2 and ds[0]["captions"] == first
    seen = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        seen.update(ds[0]["captions"])
    assert seen == {"a red square", "red thing", "a square"}


def test_collator_rows_targets_and_skips(tmp_path):
    caps, qs = records(tmp_path)
    ds = JointDataset(join_by_image(caps, qs), ImageTransform(16), captions_per_image=2,
                      questions_per_image=2)
    tok = train_tokenizer([c for r in caps for c in r.captions] + [q.question for q in qs],
                          vocab_size=100)
    vocab = AnswerVocab.build(["red", "yes"], top_k=10)
    (tmp_path / "b.png").write_bytes(b"")  # unreadable now
    batch = task_collator(tok, vocab, 12)([ds[0], ds[1], ds[2]])
    assert batch.size == 2 and batch.n_skipped == 1 and "b.png" in batch.skipped[0]
    assert batch.pixel_values.shape == (2, 3, 16, 16)
    assert batch.captions.image.tolist() == [0, 0]
    assert batch.captions.first.tolist() == [True, False]
    assert batch.questions.image.tolist() == [0, 1]
    red = vocab.index("red")
    assert batch.part("vqa").targets[0, red] == 1.0  # 10 of 10 say red after normalisation
    ids, labels = batch.part("caption").input_ids[0], batch.part("caption").labels[0]
    assert ids[0] == tok.bos_token_id
    n = int((labels != -100).sum())
    assert labels[n - 1] == tok.eos_token_id and torch.equal(ids[1:n], labels[: n - 1])


def test_epoch_sampler_orders_and_resumes():
    s = EpochBatchSampler(10, 3, seed=1)
    full = list(s)
    assert len(full) == 3 and len({i for b in full for i in b}) == 9
    s.set_position(0, 1)
    assert list(s) == full[1:]
    s.set_position(1, 0)
    assert list(s) != full


def test_swap_spatial_mirrors_only_spatial_words():
    from tuwen.data.dataset import swap_spatial

    assert swap_spatial("a red circle to the left of a blue square") == \
        "a red circle to the right of a blue square"
    assert swap_spatial("a circle in the top left, a square below it") == \
        "a circle in the bottom right, a square above it"
    assert swap_spatial("a red circle and a blue square") is None
    assert swap_spatial("leftover topping") is None  # whole words only


def swap_batch_parts(tmp_path, first: str, second: str):
    """Two one-caption images and a tokenizer that knows their words (and "right")."""
    caps = [ImageCaptions(1, make_png(tmp_path / "a.png"), "train", (first,)),
            ImageCaptions(2, make_png(tmp_path / "b.png"), "train", (second,))]
    ds = JointDataset(join_by_image(caps, []), ImageTransform(16))
    tok = train_tokenizer([first, second, "right"], vocab_size=60)
    return [ds[0], ds[1]], tok


def test_collator_adds_swapped_first_captions(tmp_path):
    items, tok = swap_batch_parts(tmp_path, "a circle left of a square", "a square")
    sets = ("train.task_options.itm.spatial_negatives=true",)
    batch = task_collator(tok, None, 12, sets=sets, train=SplitData("train"))(items)
    swaps = batch.part("itm")
    assert swaps.image.tolist() == [0]
    assert swaps.input_ids.shape[1] == batch.captions.input_ids.shape[1]
    assert tok.decode(swaps.input_ids[0], skip_special_tokens=True) == \
        "a circle right of a square"
    assert task_collator(tok, None, 12, sets=sets)(items).part("itm") is None  # validation


def test_collator_normalises_texts_and_drops_stop_words_from_the_retrieval_input(tmp_path):
    caps = [ImageCaptions(1, make_png(tmp_path / "a.png"), "train",
                          ("A  red square  on the left.",))]
    q = VQAItem(7, 1, caps[0].image_path, "What colour is the Square?", ("red",) * 10, "red",
                "colour", "other")
    ds = JointDataset(join_by_image(caps, [q]), ImageTransform(16))
    tok = train_tokenizer(["a red square on the left", "what colour is the square"],
                          vocab_size=60)
    normalizer = TextNormalizer(strip_punctuation=True, stopwords_for_retrieval=True)
    batch = task_collator(tok, None, 16, normalizer=normalizer)([ds[0]])

    def words(ids):
        return tok.decode([i for i in ids.tolist() if i > 6]).split()

    # "on" and "left" stay: spatial words carry meaning in captions
    assert words(batch.captions.input_ids[0]) == ["red", "square", "on", "left"]
    assert words(batch.part("caption").input_ids[0]) == ["a", "red", "square", "on", "the",
                                                         "left"]
    assert words(batch.questions.input_ids[0]) == ["what", "colour", "is", "the", "square"]


def test_caption_weights_are_one_over_the_images_sharing_the_text(tmp_path):
    """train.task_options.itc.specific_captions: "a square" is a caption of three images,
    "A Red Square" (the same retrieval text as "a red square") of two, each counted once per
    image."""
    caps = [ImageCaptions(1, make_png(tmp_path / "a.png"), "train",
                          ("a red square", "A Red Square", "a square")),
            ImageCaptions(2, make_png(tmp_path / "b.png"), "train", ("a red square", "a square")),
            ImageCaptions(3, make_png(tmp_path / "c.png"), "train", ("a square", "a blue dot"))]
    normalizer = TextNormalizer()
    counts = caption_image_counts(caps, normalizer)
    assert counts == {"a red square": 2, "a square": 3, "a blue dot": 1}
    ds = JointDataset(join_by_image(caps, []), ImageTransform(16), captions_per_image=3)
    tok = train_tokenizer([c for r in caps for c in r.captions], vocab_size=60)
    train = SplitData("train", captions=caps)
    sets = ("train.task_options.itc.specific_captions=true",)
    batch = task_collator(tok, None, 12, normalizer=normalizer, sets=sets, train=train)(
        [ds[0], ds[2]])
    texts = [tok.decode(ids, skip_special_tokens=True) for ids in batch.captions.input_ids]
    expected = {"a red square": 1 / 2, "a square": 1 / 3, "a blue dot": 1.0}
    assert batch.part("itc").weight.tolist() == pytest.approx([expected[t] for t in texts])
    assert task_collator(tok, None, 12)([ds[0]]).part("itc") is None  # option off
