"""Caption-collapse monitor: does the model still say different things for different images?

A captioner that collapses to one safe sentence ("a red circle") keeps a tolerable loss
while its captions stop depending on the image. Logged at each validation:
``identical_share`` (share of the most common caption), ``distinct_1``/``distinct_2``
(distinct unigrams/bigrams over all unigrams/bigrams, Li et al. 2016). Without validation,
``training.caption_check`` runs the same check on a few images every
``train.caption_check_every`` steps; ``tuwen eval`` judges its captions with ``collapse_verdict``.
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


def distinct_share(captions: list[str]) -> float:
    """Distinct captions over captions (1: every image its own caption)."""
    return len(set(captions)) / len(captions) if captions else 1.0


def collapse_verdict(captions: list[str], share: float, distinct: float) -> str | None:
    """A message when the captions collapse: one caption covers at least ``share`` of them,
    or at most ``distinct`` of them are distinct; else None."""
    if len(captions) < 2:
        return None
    top_caption, top = Counter(captions).most_common(1)[0]
    unique = distinct_share(captions)
    if top / len(captions) < share and unique > distinct:
        return None
    return (f"caption collapse: {unique:.0%} of {len(captions)} captions distinct, the most "
            f"common ({top_caption!r}) for {top / len(captions):.0%}")
