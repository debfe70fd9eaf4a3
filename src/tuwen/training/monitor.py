"""Caption-collapse monitor: does the model still say different things for different images?

A captioner that collapses to one safe sentence ("a red circle") keeps a tolerable loss
while its captions stop depending on the image. Logged at each validation:
``identical_share`` (share of the most common caption), ``distinct_1``/``distinct_2``
(distinct unigrams/bigrams over all unigrams/bigrams, Li et al. 2016).
"""

from __future__ import annotations

from collections import Counter


def ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]


def caption_diversity(captions: list[str]) -> dict[str, float]:
    if not captions:
        return {}
    words = [c.split() for c in captions]
    out = {"identical_share": Counter(captions).most_common(1)[0][1] / len(captions),
           "distinct_captions": float(len(set(captions)))}
    for n in (1, 2):
        grams = [g for w in words for g in ngrams(w, n)]
        out[f"distinct_{n}"] = len(set(grams)) / len(grams) if grams else 0.0
    return out


def collapse_warning(stats: dict[str, float], n_images: int, share: float) -> str | None:
    """A message when one caption covers at least ``share`` of the images, else None."""
    if n_images < 2 or stats.get("identical_share", 0.0) < share:
        return None
    if stats["distinct_captions"] == 1:
        return f"caption collapse: the model says the same caption for all {n_images} images"
    return (f"caption collapse: one caption for {stats['identical_share']:.0%} of "
            f"{n_images} validation images (train.collapse_share={share})")
