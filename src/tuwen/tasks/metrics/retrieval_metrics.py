"""Image-text retrieval recall (R@K both ways) with several captions per image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tuwen.errors import TuwenError


def _check(sim: np.ndarray, owner: np.ndarray, ks: Sequence[int]) -> None:
    if sim.ndim != 2:
        raise TuwenError(f"similarity must be 2-D (n_images, n_texts), got shape {sim.shape}")
    n_images, n_texts = sim.shape
    if n_images == 0 or n_texts == 0:
        raise TuwenError(f"similarity is empty (shape {sim.shape})")
    if owner.shape != (n_texts,):
        raise TuwenError(f"text_to_image has {owner.size} entries but similarity has "
                         f"{n_texts} text columns")
    if owner.min() < 0 or owner.max() >= n_images:
        raise TuwenError(f"text_to_image holds image indices outside 0..{n_images - 1}")
    uncaptioned = n_images - np.unique(owner).size
    if uncaptioned:
        raise TuwenError(f"{uncaptioned} of {n_images} images have no caption in "
                         "text_to_image, so image-to-text recall is undefined for them")
    if np.isnan(sim).any():
        raise TuwenError("similarity contains NaN")
    if not ks or any(int(k) < 1 for k in ks):
        raise TuwenError(f"recall cut-offs must be positive integers, got {list(ks)}")


def i2t_ranks(sim: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """0-based rank of each image's best caption among all texts.

    Ties count against the query: a wrong text scoring *equal* to the best correct one is
    ranked ahead of it. Other correct captions never push the rank down.
    """
    n_images, n_texts = sim.shape
    gt_scores = sim[owner, np.arange(n_texts)]  # (N_txt,) each text's score with its image
    best = np.full(n_images, -np.inf, dtype=np.float64)
    np.maximum.at(best, owner, gt_scores)  # (N_img,) best correct caption per image
    # Correct captions tied with the best one are counted by the >= below; take them back.
    tied_gt = np.zeros(n_images, dtype=np.int64)
    np.add.at(tied_gt, owner, gt_scores >= best[owner])
    return (sim >= best[:, None]).sum(axis=1) - tied_gt


def t2i_ranks(sim: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """0-based rank of each caption's image among all images (ties count against it)."""
    gt_scores = sim[owner, np.arange(sim.shape[1])]  # (N_txt,)
    return (sim >= gt_scores[None, :]).sum(axis=0) - 1  # minus the correct image itself


def _summary(prefix: str, ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    out = {f"{prefix}_r{k}": float(100.0 * np.mean(ranks < k)) for k in ks}
    # As VSE++ / SCAN report it: floor of the median 0-based rank, made 1-based.
    out[f"{prefix}_median_rank"] = float(np.floor(np.median(ranks)) + 1)
    out[f"{prefix}_mean_rank"] = float(ranks.mean() + 1)
    return out


def retrieval_recall(similarity: np.ndarray, text_to_image: Sequence[int],
                     ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@K (percent) for image->text and text->image retrieval.

    ``similarity[i, j]`` scores image ``i`` against text ``j``; text ``j`` describes image
    ``text_to_image[j]`` (usually 5 texts per image). Image->text: an image counts as found
    at K if any of its captions ranks in the top K. Text->image: each caption ranks all
    images. Ties are pessimistic (see :func:`i2t_ranks`), so a constant similarity matrix
    scores near chance, never 100.

    Returns ``i2t_r{k}``, ``t2i_r{k}`` for each k, ``{i2t,t2i}_{median,mean}_rank`` (1-based)
    and the 0-based rank arrays ``i2t_ranks`` (per image) and ``t2i_ranks`` (per text).
    """
    sim = np.asarray(similarity)
    owner = np.asarray(text_to_image, dtype=np.int64).reshape(-1)
    _check(sim, owner, ks)
    ks = [int(k) for k in ks]
    i2t = i2t_ranks(sim, owner)
    t2i = t2i_ranks(sim, owner)
    return {**_summary("i2t", i2t, ks), **_summary("t2i", t2i, ks),
            "i2t_ranks": i2t, "t2i_ranks": t2i}
