"""Retrieval recall on hand-made similarity matrices."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tuwen.errors import TuwenError
from tuwen.tasks.metrics.retrieval_metrics import retrieval_recall


def test_small_matrix_with_ties_both_directions() -> None:
    # texts t0,t1 -> image 0; t2,t3 -> image 1; t4,t5 -> image 2
    sim = np.array([
        [0.9, 0.1, 0.8, 0.2, 0.3, 0.4],
        [0.7, 0.6, 0.5, 0.65, 0.1, 0.2],
        [0.9, 0.8, 0.7, 0.6, 0.1, 0.5],
    ])
    out = retrieval_recall(sim, [0, 0, 1, 1, 2, 2], ks=(1, 2, 5))
    # i2t: image 0 best own 0.9, nothing above -> 0; image 1 best own 0.65, t0 above -> 1;
    # image 2 best own 0.5, t0..t3 above -> 4.
    assert out["i2t_ranks"].tolist() == [0, 1, 4]
    # t2i: t0 ties with image 2 at 0.9 -> counts against it -> 1; t1 -> 2; t2 -> 2; t3 -> 0;
    # t4 own 0.1, image 0 above and image 1 tied -> 2; t5 -> 0.
    assert out["t2i_ranks"].tolist() == [1, 2, 2, 0, 2, 0]
    assert out["i2t_r1"] == pytest.approx(100 / 3)
    assert out["i2t_r2"] == pytest.approx(200 / 3)
    assert out["i2t_r5"] == 100.0
    assert out["t2i_r1"] == pytest.approx(100 / 3)
    assert out["t2i_r2"] == 50.0
    assert out["t2i_r5"] == 100.0
    assert out["i2t_median_rank"] == 2.0  # median 0-based rank 1
    assert out["i2t_mean_rank"] == pytest.approx(5 / 3 + 1)
    assert out["t2i_median_rank"] == 2.0  # floor(median([0,0,1,2,2,2]) = 1.5) + 1
    assert out["t2i_mean_rank"] == pytest.approx(7 / 6 + 1)


def test_five_captions_per_image() -> None:
    owner = np.repeat(np.arange(4), 5)  # text j describes image j // 5
    sim = np.zeros((4, 20))
    sim[0, 2] = 1.0                          # image 0: its caption t2 is first -> rank 0
    sim[1, 5], sim[1, 0], sim[1, 10] = 0.8, 0.9, 0.85   # image 1: two foreign above -> 2
    sim[2, 12], sim[2, 0:7] = 0.5, 0.6       # image 2: t0..t6 (all foreign) above -> 7
    sim[3, 15:20], sim[3, 0:12] = 0.1, 0.2   # image 3: twelve foreign above -> 12
    out = retrieval_recall(sim, owner)
    assert out["i2t_ranks"].tolist() == [0, 2, 7, 12]
    assert (out["i2t_r1"], out["i2t_r5"], out["i2t_r10"]) == (25.0, 50.0, 75.0)
    # t2i: only t2, t5, t12 and t15..t19 beat every other image; each other caption scores
    # 0 with its image and ties or loses against all three others -> rank 3.
    expected_t2i = [3, 3, 0, 3, 3, 0, 3, 3, 3, 3, 3, 3, 0, 3, 3, 0, 0, 0, 0, 0]
    assert out["t2i_ranks"].tolist() == expected_t2i
    assert (out["t2i_r1"], out["t2i_r5"], out["t2i_r10"]) == (40.0, 100.0, 100.0)


def test_other_correct_captions_do_not_push_the_rank_down() -> None:
    sim = np.array([[0.9, 0.9, 0.9, 0.1], [0.1, 0.1, 0.1, 0.9]])
    out = retrieval_recall(sim, [0, 0, 0, 1], ks=(1,))
    assert out["i2t_ranks"].tolist() == [0, 0]


def test_constant_similarity_is_not_perfect() -> None:
    owner = np.repeat(np.arange(10), 5)
    out = retrieval_recall(np.ones((10, 50)), owner)
    assert out["i2t_r1"] == out["i2t_r5"] == out["i2t_r10"] == 0.0
    assert out["t2i_r1"] == out["t2i_r5"] == 0.0
    assert out["i2t_ranks"].tolist() == [45] * 10  # behind all 45 foreign captions


def test_perfect_similarity_is_perfect() -> None:
    owner = np.repeat(np.arange(6), 5)
    sim = (owner[None, :] == np.arange(6)[:, None]).astype(np.float32)
    out = retrieval_recall(sim, owner)
    assert out["i2t_r1"] == out["t2i_r1"] == 100.0
    assert out["i2t_median_rank"] == out["t2i_mean_rank"] == 1.0


def test_1000_by_5000_is_fast() -> None:
    rng = np.random.default_rng(0)
    sim = rng.standard_normal((1000, 5000)).astype(np.float32)
    start = time.perf_counter()
    retrieval_recall(sim, np.repeat(np.arange(1000), 5))
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(("sim", "owner", "message"), [
    (np.zeros((2, 3)), [0, 1], "3 text columns"),
    (np.zeros((2, 3)), [0, 0, 0], "1 of 2 images have no caption"),
    (np.zeros((2, 3)), [0, 1, 2], "outside 0..1"),
    (np.array([[0.0, np.nan], [0.0, 0.0]]), [0, 1], "NaN"),
    (np.zeros(3), [0, 0, 0], "2-D"),
])
def test_bad_input_is_a_clear_error(sim: np.ndarray, owner: list[int], message: str) -> None:
    with pytest.raises(TuwenError, match=message):
        retrieval_recall(sim, owner)
