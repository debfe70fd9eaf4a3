"""Official VQAv2 accuracy on hand-computed fixtures."""

from __future__ import annotations

import pytest

from tuwen.errors import TuwenError
from tuwen.tasks.metrics.vqa_accuracy import question_accuracy, vqa_accuracy


def _annotation(qid: int, answers: list[str], *, qtype: str = "what color",
                atype: str = "other") -> dict:
    assert len(answers) == 10
    return {
        "question_id": qid, "image_id": qid // 10, "question_type": qtype, "answer_type": atype,
        "multiple_choice_answer": answers[0],
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                    for i, a in enumerate(answers)],
    }


def _question(qid: int) -> dict:
    return {"question_id": qid, "image_id": qid // 10, "question": "?"}


def _score(prediction: str, answers: list[str]) -> float:
    return vqa_accuracy({1: prediction}, [_question(1)], [_annotation(1, answers)])["accuracy"]


def test_two_of_ten_is_the_leave_one_out_mean_not_two_thirds() -> None:
    answers = ["red", "red"] + ["blue"] * 8
    # Leaving out one of the 2 "red" annotators leaves 1 match -> 1/3 (twice);
    # leaving out one of the 8 others leaves 2 matches -> 2/3 (eight times).
    # (2 * 1/3 + 8 * 2/3) / 10 = 0.6, not min(1, 2/3) = 0.667.
    assert _score("red", answers) == 60.0


@pytest.mark.parametrize(("n_red", "expected"), [
    (0, 0.0),
    (1, 30.0),    # (1 * 0 + 9 * 1/3) / 10
    (3, 90.0),    # (3 * 2/3 + 7 * 1) / 10
    (4, 100.0),   # every subset of 9 still holds >= 3 "red"
])
def test_leave_one_out_counts(n_red: int, expected: float) -> None:
    answers = ["red"] * n_red + ["blue"] * (10 - n_red)
    assert _score("red", answers) == expected


def test_prediction_is_normalised_when_gt_answers_differ() -> None:
    answers = ["2"] * 9 + ["3"]
    assert _score("two", answers) == 100.0
    assert _score("Two.", answers) == 100.0
    assert _score(" 2\n", answers) == 100.0


def test_identical_gt_answers_skip_normalisation_official_quirk() -> None:
    # All ten agree: neither they nor the prediction are normalised, so "Yes"/"two" miss.
    assert _score("Yes", ["yes"] * 10) == 0.0
    assert _score("two", ["2"] * 10) == 0.0
    assert _score("yes", ["yes"] * 10) == 100.0
    # ... but newlines and tabs are still stripped, on both sides.
    assert _score("yes\t", [" yes\n"] * 10) == 100.0
    # One dissenting annotator is enough to switch normalisation on.
    assert _score("Yes", ["yes"] * 9 + ["no"]) == 100.0


def test_gt_answers_are_normalised_too() -> None:
    answers = ["The red car", "red car.", "a red car"] + ["blue"] * 7
    assert _score("red car", answers) == 90.0


def test_breakdowns_by_answer_and_question_type() -> None:
    anns = [
        _annotation(1, ["red", "red"] + ["blue"] * 8, qtype="what color", atype="other"),
        _annotation(2, ["yes"] * 9 + ["no"], qtype="is the", atype="yes/no"),
        _annotation(3, ["2"] * 10, qtype="how many", atype="number"),
        _annotation(4, ["no"] * 10, qtype="is the", atype="yes/no"),
    ]
    preds = {1: "red", 2: "yes", 3: "two", 4: "no"}
    out = vqa_accuracy(preds, [_question(q) for q in preds], anns)
    # per question: 0.6, 1.0, 0.0 (identical-answers quirk), 1.0
    assert out["per_question"] == {1: 60.0, 2: 100.0, 3: 0.0, 4: 100.0}
    assert out["accuracy"] == 65.0  # round(100 * 2.6 / 4, 2)
    assert out["by_answer_type"] == {"other": 60.0, "yes/no": 100.0, "number": 0.0}
    assert out["by_question_type"] == {"what color": 60.0, "is the": 100.0, "how many": 0.0}
    assert out["n_questions"] == 4


def test_rounding_matches_official_two_decimals() -> None:
    anns = [_annotation(q, ["red"] + ["blue"] * 9) for q in (1, 2, 3)]
    preds = {1: "red", 2: "blue", 3: "red"}  # 0.3, 1.0, 0.3
    out = vqa_accuracy(preds, [_question(q) for q in preds], anns)
    assert out["accuracy"] == round(100 * 1.6 / 3, 2) == 53.33


def test_duplicate_answer_records_leave_together_as_in_official_code() -> None:
    answers = [{"answer": "red", "answer_id": 1}] * 2 + [
        {"answer": "blue", "answer_id": i} for i in range(2, 10)]
    # Official `item != gtAnsDatum`: the two equal "red" records drop out together.
    # red held out (x2): 0 others -> 0; blue held out (x8): 2 reds -> 2/3. Mean = 16/30.
    assert question_accuracy("red", answers) == pytest.approx(16 / 30)


def test_missing_prediction_is_an_error_naming_the_count() -> None:
    anns = [_annotation(q, ["yes"] * 10) for q in (1, 2, 3)]
    with pytest.raises(TuwenError, match="2 of 3 questions have no predicted answer"):
        vqa_accuracy({1: "yes"}, [_question(q) for q in (1, 2, 3)], anns)


def test_prediction_for_unknown_question_is_an_error() -> None:
    anns = [_annotation(1, ["yes"] * 10)]
    with pytest.raises(TuwenError, match="1 predictions are for question ids not in"):
        vqa_accuracy({1: "yes", 99: "no"}, [_question(1)], anns)


def test_annotation_without_question_is_an_error() -> None:
    with pytest.raises(TuwenError, match="not in the questions"):
        vqa_accuracy({1: "yes"}, [_question(2)], [_annotation(1, ["yes"] * 10)])


def test_malformed_annotation_names_the_key() -> None:
    ann = _annotation(1, ["yes"] * 10)
    del ann["answer_type"]
    with pytest.raises(TuwenError, match="answer_type"):
        vqa_accuracy({1: "yes"}, [_question(1)], [ann])
