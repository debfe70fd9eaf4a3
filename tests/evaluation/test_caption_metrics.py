"""Caption metrics against pycocoevalcap itself, and the pure-Python PTB tokenizer."""

from __future__ import annotations

import shutil
from collections.abc import Hashable

import pytest

from tuwen.errors import TuwenError
from tuwen.evaluation.caption_metrics import caption_scores, ptb_tokenize, ptb_tokenize_lines

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
    monkeypatch.setattr(shutil, "which",
                        lambda name, *a, **kw: None if name == "java" else real_which(name, *a, **kw))


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


# Expected outputs written out by hand from the PTB conventions (and checked against
# PTBTokenizer 3.4.1): lower case, clitics split, brackets escaped and kept ("-lrb-" is not
# in pycocoevalcap's punctuation list, which has "-LRB-"), other punctuation removed.
@pytest.mark.parametrize(("caption", "expected"), [
    ("A man's dog doesn't like the cat.", "a man 's dog does n't like the cat"),
    ('"Hello," she said (quietly).', "hello she said -lrb- quietly -rrb-"),
    ("A black-and-white photo of a 1,000-year-old tree -- wow!",
     "a black-and-white photo of a 1,000-year-old tree wow"),
    ("It costs $5.50 or 3.5% at 10:30 p.m. in the U.S.",
     "it costs $ 5.50 or 3.5 % at 10:30 p.m. in the u.s."),
    ("I can't, won't; cannot gonna", "i ca n't wo n't can not gon na"),
    ("Rock 'n' roll at Mr. Smith's place, e.g. the '90s.",
     "rock 'n' roll at mr. smith 's place e.g. the '90s"),
    ("The \u201cfancy\u201d quotes \u2014 and \u2018single\u2019 ones",
     "the fancy quotes and single ones"),
    ("Two dogs; one cat: no birds? Yes!", "two dogs one cat no birds yes"),
    ("A 2-year-old's toy; the kids' toys.", "a 2-year-old 's toy the kids toys"),
    ("a dog.The cat", "a dog.the cat"),
    ("\u00bd cup of \u00a35 tea", "1/2 cup of # 5 tea"),
    ("Tab\tseparated   words", "tab separated words"),
    ("", ""),
])
def test_ptb_tokenize_by_hand(caption: str, expected: str) -> None:
    assert ptb_tokenize(caption) == expected


def test_lines_are_lexed_as_one_file() -> None:
    # PTBLexer keeps "No." whole before a digit, even across the line break.
    assert ptb_tokenize_lines(["a bus, No.", "5 dogs"]) == ["a bus no.", "5 dogs"]
    assert ptb_tokenize_lines(["a bus, No."]) == ["a bus no"]


TRICKY = [
    "A man's dog doesn't like the cat.",
    '"Hello," she said (quietly) [really] {yes}.',
    "A black-and-white photo of a 1,000-year-old tree -- wow!",
    "It costs $5.50 or 3.5% ... at 10:30 p.m. in the U.S.",
    "I can't, won't, shouldn't; y'all'd've gone. Cannot gonna wanna",
    "Rock 'n' roll at Mr. Smith's place, e.g. the '90s.",
    "The \u201cfancy\u201d quotes and \u2018single\u2019 ones \u2014 em dash \u2013 en dash.",
    "and/or AT&T &amp; a+b=c 50/50 x*y #hashtag @user",
    "email me@example.com or visit http://www.example.com/x?y=1 now",
    "It's 5 o'clock. O'Neil's. The people's choice; the peoples' choice",
    "A 2-year-old's toy; 'quoted' words and \"double\" ones",
    "...leading dots and trailing.. end... end. . .",
    "Mr. Smith and Dr. Jones met Jan. 5 at St. Paul's, etc. No. 5 and no. 6",
    "A.B. c.d.e. U.S.A. N.Y. i.e., e.g., vs. approx. no.",
    "it's. he's! I'm here. we'd've. They'll. you're. I've DON'T CANNOT",
    "1/2 3-4 5--6 -7 +8 =9 10% $10 #1 ~20 20s 1990's 90's '90s 2 1/2 cups",
    "man 's dog ' s x-ray e-mail x--y pre- post -ed hot-dog co-op 7-11",
    "hello!!! what?! wow!? ok?? no! well...i think so... a dog... a cat. . .",
    "a 4x4 truck on I-95 with 2.5kg 3:00pm 10am \u00a35 \u20ac3 \u00a27 \u00a59 US$5",
    "S\u00e3o Paulo caf\u00e9 na\u00efve \u00bd cup \u00bc",
    "dog.cat cat.a dog.5 Inc.a Jr.I won't x?y hi!there A. The end",
    "cont'd somethin' ol' 'em c'mon li'l D'Arc l'eau y'know more'n ain't",
    "a >> b << c :) ;-) :( ^_^ <b>bold</b> (555) 123-4567",
    "Some people at a Starbucks in the U.S.A.",
    "A bathroom with a toilet, sink, and shower.",
    "A woman's hand holding a cell-phone.",
    "",
    "there's a cat in the car's window",
]


@needs_java
def test_python_tokenizer_equals_ptbtokenizer_on_tricky_sentences() -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    java = PTBTokenizer().tokenize({i: [{"caption": s}] for i, s in enumerate(TRICKY)})
    ours = ptb_tokenize_lines(TRICKY)
    for i, sentence in enumerate(TRICKY):
        assert ours[i] == java[i][0], sentence
