"""Paired bootstrap over test items: is the difference between two variants real?

Per-item scores come from what ``tuwen eval`` writes to ``predictions.jsonl``: per image
CIDEr-D (the corpus CIDEr is their mean), per query recall@1 (rank 1 or not, both
directions) and per question VQA accuracy (the official accuracy is their mean). Where a
caption line has no per-image CIDEr it is computed from the line's caption and references
with pycocoevalcap's Cider over the whole file.

Items are resampled with replacement, the same draw for both variants (paired); with
several seeds per variant the seeds are resampled too, each variant on its own, so the
interval holds both the test-set and the training-seed variation.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuwen.errors import DataError

Scores = dict[str, dict[str, float]]  # metric -> item key -> score
BOOTSTRAP_METRICS = ("caption.cider", "retrieval.i2t_r1", "retrieval.t2i_r1", "vqa.accuracy")


def read_lines(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "predictions file not found (run tuwen eval first)")
    lines = []
    for i, text in enumerate(path.read_text().splitlines()):
        if text.strip():
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError as err:
                raise DataError(path, f"not JSON: {err.msg}", index=i) from None
    return lines


def _caption_scores(lines: list[dict]) -> dict[str, float]:
    caps = [ln for ln in lines if ln.get("task") == "caption"]
    if not caps:
        return {}
    if all("cider" in ln for ln in caps):
        return {str(ln["image_id"]): float(ln["cider"]) for ln in caps}
    from tuwen.tasks.metrics.caption_metrics import caption_scores

    preds = {str(ln["image_id"]): ln["caption"] for ln in caps}
    refs = {str(ln["image_id"]): list(ln["references"]) for ln in caps}
    per_image = caption_scores(preds, refs)["per_image"]
    return {k: float(v["cider"]) for k, v in per_image.items()}


def _retrieval_scores(lines: list[dict], direction: str) -> dict[str, float]:
    seen: Counter = Counter()
    out = {}
    for ln in lines:
        if ln.get("task") != "retrieval" or ln.get("direction") != direction:
            continue
        key = f"{ln['image_id']}|{ln.get('query', '')}"
        seen[key] += 1  # the same caption text may describe one image twice
        out[f"{key}|{seen[key]}"] = 100.0 * (ln[f"{direction}_rank"] == 1)
    return out


def item_scores(path: str | Path) -> Scores:
    """Per-item scores of one predictions.jsonl, by metrics.json key."""
    lines = read_lines(path)
    scores: Scores = {"caption.cider": _caption_scores(lines),
                      "retrieval.i2t_r1": _retrieval_scores(lines, "i2t"),
                      "retrieval.t2i_r1": _retrieval_scores(lines, "t2i"),
                      "vqa.accuracy": {}}
    for ln in lines:
        if ln.get("task") == "vqa" and ln.get("accuracy") is not None:
            qid, acc = str(ln["question_id"]), float(ln["accuracy"])
            scores["vqa.accuracy"][qid] = acc
            scores.setdefault(f"vqa.by_question_type.{ln['question_type']}", {})[qid] = acc
    return {k: v for k, v in scores.items() if v}


@dataclass(frozen=True)
class Difference:
    """``mean_a - mean_b`` with its bootstrap confidence interval."""

    metric: str
    a: str
    b: str
    mean_a: float
    mean_b: float
    low: float
    high: float
    n_items: int

    @property
    def diff(self) -> float:
        return self.mean_a - self.mean_b

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _matrix(runs: Sequence[dict[str, float]], items: list[str]) -> np.ndarray:
    return np.array([[run[k] for k in items] for run in runs], dtype=np.float64)  # (S, N)


def paired_bootstrap(runs_a: Sequence[dict[str, float]], runs_b: Sequence[dict[str, float]],
                     *, resamples: int = 2000, level: float = 0.95, seed: int = 0,
                     chunk: int = 250) -> tuple[float, float, float, float, int]:
    """(mean_a, mean_b, low, high, n_items) for the difference a - b over the items every run
    scored; ``runs_*`` hold one ``item -> score`` dict per seed."""
    items = sorted(set.intersection(*(set(r) for r in [*runs_a, *runs_b])))
    if not items:
        raise ValueError("the two variants share no scored items")
    a, b = _matrix(runs_a, items), _matrix(runs_b, items)
    rng = np.random.default_rng(seed)
    n, deltas = len(items), []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=size) / n  # (R, N)
        item_a, item_b = a @ weights.T, b @ weights.T                      # (S, R)
        seeds_a = rng.integers(len(a), size=(len(a), size))
        seeds_b = rng.integers(len(b), size=(len(b), size))
        cols = np.arange(size)
        deltas.append(item_a[seeds_a, cols].mean(0) - item_b[seeds_b, cols].mean(0))
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(np.concatenate(deltas), [tail, 100 - tail])
    return float(a.mean()), float(b.mean()), float(low), float(high), n


def compare(scores: dict[str, Sequence[Scores]], *, resamples: int = 2000,
            level: float = 0.95, seed: int = 0) -> list[Difference]:
    """Every pair of variants (in the given order) on every metric all of them scored."""
    names = list(scores)
    metrics = sorted(set.intersection(*(set(s) for runs in scores.values() for s in runs))) \
        if names else []
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for metric in metrics:
                mean_a, mean_b, low, high, n = paired_bootstrap(
                    [s[metric] for s in scores[a]], [s[metric] for s in scores[b]],
                    resamples=resamples, level=level, seed=seed)
                out.append(Difference(metric, a, b, mean_a, mean_b, low, high, n))
    return out
