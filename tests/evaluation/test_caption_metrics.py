"""Caption metrics against pycocoevalcap itself (tokenizer: test_ptb_tokenizer.py)."""

from __future__ import annotations

import shutil
from collections.abc import Hashable

import pytest

from tuwen.errors import TuwenError
from tuwen.tasks.metrics.caption_metrics import caption_scores

HAS_JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not HAS_JAVA, reason="java not on PATH")

REFERENCES: dict[Hashable, list[str]] = {
    1: ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave.",
        "A man on a surfboard riding a wave.", "Surfer in a wet suit riding a big wave.",
        "A person surfing on a wave at the beach."],
    2: ["Two giraffes standing next to each other in a field.",
        "A pair of giraffes in the grass near trees.", "Two giraffes are standing in a field.",
        "Giraffes standing together on the savanna.", "Two tall giraffes next to some trees."],
    "img3": ["A kitchen with stainless steel appliances.",
             "A modern kitchen with a stove and a fridge.", "The kitchen has granite counters.",
             "A clean kitchen with white cabinets.", "A kitchen that has a refrigerator."],
    4: ["A cat laying on a bed next to a laptop.", "A cat sleeping beside a computer.",
        "A kitten lies on a bed by a laptop computer.", "The cat is resting near the laptop.",
        "A cat and a laptop on a bed."],
    5: ["A red double-decker bus on a city street.", "A bus driving down the road.",
        "A double decker bus parked by the curb.", "Red bus on the street near buildings.",
        "A big red bus traveling down a street."],
    6: ["A plate of food with broccoli and rice.", "Rice, broccoli & chicken on a plate.",
        "A dinner plate with vegetables and meat.", "Some food that's on a plate.",
        "A close-up of a plate of food."],
}
PREDICTIONS: dict[Hashable, str] = {
    1: "A man riding a wave on top of a surfboard.",  # a perfect copy of a reference
    2: "Two giraffes standing in a field.",
    "img3": "A kitchen with a stove and a refrigerator.",
    4: "A cat laying on a bed with a laptop.",
    5: "A red bus driving down a street.",
    6: "A plate of food with broccoli.",
}
SCALARS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")


def _no_java(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **kw: (
        None if name == "java" else real_which(name, *a, **kw)))


@pytest.fixture(scope="module")
def java_scores() -> dict:
    if not HAS_JAVA:
        pytest.skip("java not on PATH")
    return caption_scores(PREDICTIONS, REFERENCES)


@needs_java
def test_equals_pycocoevalcap_called_directly(java_scores: dict) -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()  # as COCOEvalCap.evaluate: two tokenizer calls
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in REFERENCES.items()})
    res = tokenizer.tokenize({k: [{"caption": PREDICTIONS[k]}] for k in REFERENCES})
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    meteor, _ = Meteor().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, cider_each = Cider().compute_score(gts, res)

    expected = dict(zip(SCALARS, [*bleu, meteor, rouge, cider]))
    for key in SCALARS:
        assert java_scores[key] == pytest.approx(expected[key], abs=1e-9), key
    for k, c, b in zip(gts, cider_each, bleu_each[3]):
        assert java_scores["per_image"][k]["cider"] == pytest.approx(c, abs=1e-9)
        assert java_scores["per_image"][k]["bleu_4"] == pytest.approx(b, abs=1e-9)
    assert java_scores["protocol"]["tokenization"] == "ptb-java"
    assert java_scores["protocol"]["meteor"] == "meteor-1.5"


@needs_java
def test_no_java_fallback_matches_java_on_simple_sentences(
        java_scores: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_java(monkeypatch)
    fallback = caption_scores(PREDICTIONS, REFERENCES)
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"):
        assert fallback[key] == pytest.approx(java_scores[key], abs=1e-12), key
    for k, scores in java_scores["per_image"].items():
        assert fallback["per_image"][k] == pytest.approx(scores, abs=1e-12), k


def test_no_java_reports_meteor_as_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_java(monkeypatch)
    out = caption_scores(PREDICTIONS, REFERENCES)
    assert out["meteor"] is None
    assert "java not found" in out["protocol"]["meteor_unavailable"]
    assert out["protocol"]["tokenization"] == "ptb-python"
    assert set(out["per_image"]) == set(REFERENCES)


def test_perfect_predictions_score_bleu_one(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_java(monkeypatch)
    perfect = {k: refs[0] for k, refs in REFERENCES.items()}
    out = caption_scores(perfect, REFERENCES)
    assert out["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert out["bleu_1"] == pytest.approx(1.0, abs=1e-6)
    assert out["per_image"][1]["bleu_4"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(("predictions", "references"), [
    ({1: "a dog"}, {1: ["a dog"], 2: ["a cat"]}),
    ({1: "a dog", 3: "a cat"}, {1: ["a dog"]}),
])
def test_ids_must_match(predictions: dict, references: dict) -> None:
    with pytest.raises(TuwenError, match="same ids"):
        caption_scores(predictions, references)


def test_references_must_be_a_list_of_strings() -> None:
    with pytest.raises(TuwenError, match="non-empty list"):
        caption_scores({1: "a dog"}, {1: []})
    with pytest.raises(TuwenError, match="non-empty list"):
        caption_scores({1: "a dog"}, {1: "a dog"})
