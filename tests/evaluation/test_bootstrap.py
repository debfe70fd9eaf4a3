"""Paired bootstrap over per-item scores read from predictions.jsonl."""

import json

import numpy as np
import pytest

from tuwen.errors import DataError
from tuwen.evaluation.bootstrap import compare, item_scores, paired_bootstrap


def _write(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _vqa(accuracies, types=None):
    return [{"task": "vqa", "question_id": i, "image_id": i // 4, "question": "q",
             "question_type": (types or ["count"] * len(accuracies))[i], "answer_type": "number",
             "answer": "2", "gt": "2", "accuracy": acc} for i, acc in enumerate(accuracies)]


def test_interval_contains_the_true_difference_of_two_constructed_files(tmp_path):
    # Questions drawn from populations with accuracies 70 % (a) and 60 % (b): a true
    # difference of 10 points, seen on 1500 paired questions.
    rng = np.random.default_rng(3)
    u = rng.random(1500)
    a = _write(tmp_path / "a.jsonl", _vqa([100.0 * (x < 0.7) for x in u]))
    b = _write(tmp_path / "b.jsonl", _vqa([100.0 * (x < 0.6) for x in u]))
    (diff,) = [d for d in compare({"a": [item_scores(a)], "b": [item_scores(b)]})
               if d.metric == "vqa.accuracy"]
    assert diff.n_items == 1500
    assert diff.low < 10.0 < diff.high
    assert diff.excludes_zero and diff.low > 5.0 and diff.high < 15.0
    # the same file against itself: exactly no difference
    (same,) = [d for d in compare({"a": [item_scores(a)], "b": [item_scores(a)]})
               if d.metric == "vqa.accuracy"]
    assert same.diff == same.low == same.high == 0.0 and not same.excludes_zero


def test_independent_noise_of_equal_means_is_within_noise():
    rng = np.random.default_rng(0)
    a = {str(i): float(v) for i, v in enumerate(rng.normal(50, 10, 400))}
    b = {str(i): float(v) for i, v in enumerate(rng.normal(50, 10, 400))}
    mean_a, mean_b, low, high, n = paired_bootstrap([a], [b], resamples=1000)
    assert n == 400 and low < 0 < high
    assert low <= mean_a - mean_b <= high


def test_seeds_widen_the_interval():
    items = {str(i): 50.0 for i in range(200)}
    shifted = [{k: v + s for k, v in items.items()} for s in (-4.0, 0.0, 4.0)]
    _, _, low1, high1, _ = paired_bootstrap([items], [items])
    _, _, low3, high3, _ = paired_bootstrap(shifted, [items])
    assert low1 == high1 == 0.0  # every item equal: only the seed draw moves the difference
    assert low3 < -1.0 and high3 > 1.0


def test_item_scores_of_each_task(tmp_path):
    lines = [
        {"task": "caption", "image_id": 1, "caption": "a red circle", "references": ["x"],
         "cider": 1.5},
        {"task": "caption", "image_id": 2, "caption": "a blue square", "references": ["y"],
         "cider": 0.5},
        {"task": "retrieval", "direction": "i2t", "image_id": 1, "i2t_rank": 1},
        {"task": "retrieval", "direction": "i2t", "image_id": 2, "i2t_rank": 3},
        {"task": "retrieval", "direction": "t2i", "query": "a red circle", "image_id": 1,
         "t2i_rank": 2},
        {"task": "retrieval", "direction": "t2i", "query": "a red circle", "image_id": 1,
         "t2i_rank": 1},
        *_vqa([100.0, 30.0], types=["count", "colour"]),
    ]
    scores = item_scores(_write(tmp_path / "p.jsonl", lines))
    assert scores["caption.cider"] == {"1": 1.5, "2": 0.5}
    assert sorted(scores["retrieval.i2t_r1"].values()) == [0.0, 100.0]
    assert sorted(scores["retrieval.t2i_r1"].values()) == [0.0, 100.0]  # a repeated text twice
    assert scores["vqa.accuracy"] == {"0": 100.0, "1": 30.0}
    assert scores["vqa.by_question_type.colour"] == {"1": 30.0}


def test_per_image_cider_is_computed_when_the_file_lacks_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")  # python PTB tokenisation
    from tuwen.tasks.metrics.caption_metrics import caption_scores

    refs = {"1": ["a red circle", "a red circle left of a square"],
            "2": ["a blue square", "a small blue square"],
            "3": ["a green triangle", "a triangle"]}
    preds = {"1": "a red circle", "2": "a blue circle", "3": "a green square"}
    lines = [{"task": "caption", "image_id": int(k), "caption": preds[k], "references": refs[k]}
             for k in refs]
    scores = item_scores(_write(tmp_path / "p.jsonl", lines))["caption.cider"]
    assert np.mean(list(scores.values())) == pytest.approx(caption_scores(preds, refs)["cider"])


def test_a_missing_file_is_one_error(tmp_path):
    with pytest.raises(DataError, match="predictions file not found"):
        item_scores(tmp_path / "nope.jsonl")
