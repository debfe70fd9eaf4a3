"""What the report shows beyond the headline metrics, computed from an evaluation's files.

Pure functions over the records of ``predictions.jsonl`` (one JSON object per line, with a
``task`` of ``caption``, ``retrieval`` or ``vqa``) and ``metrics.jsonl``: caption collapse
statistics, the worst captions, retrieval failures and the most confused VQA answers.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tuwen.config import TrainConfig
from tuwen.errors import DataError
from tuwen.training.caption_check import CHECKS_FILE
from tuwen.training.monitor import collapse_verdict


def read_jsonl(path: str | Path, required: Sequence[str] = ()) -> list[dict]:
    """The JSON objects of a JSONL file (blank lines skipped); a broken line is a DataError
    naming the file, the record (0-based line) and the missing key."""
    path = Path(path)
    records = []
    for index, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(path, f"not valid JSON ({err.msg})", index=index) from None
        if not isinstance(record, dict):
            raise DataError(path, f"expected a JSON object, got {type(record).__name__}",
                            index=index)
        for key in required:
            if key not in record:
                raise DataError(path, "missing", index=index, key=key)
        records.append(record)
    return records


def of_task(records: Sequence[dict], task: str, direction: str | None = None) -> list[dict]:
    return [r for r in records if r.get("task") == task
            and (direction is None or r.get("direction") == direction)]


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]


def collapse_stats(captions: Sequence[str], top: int = 5) -> dict:
    """How much the generated captions collapse onto a few sentences.

    ``identical_share``: share of captions that some other image also got word for word;
    ``most_common_share``: share of the single most frequent caption; ``distinct_1/2``:
    distinct uni-/bigrams over all uni-/bigrams (Li et al., 2016), words split on spaces,
    lower case.
    """
    counts = Counter(captions)
    words = [c.lower().split() for c in captions]
    out: dict = {"n_captions": len(captions), "distinct_captions": len(counts),
                 "identical_share": sum(v for v in counts.values() if v > 1) / max(len(captions),
                                                                                 1),
                 "most_common_share": max(counts.values(), default=0) / max(len(captions), 1),
                 "vocabulary": len({w for ws in words for w in ws})}
    for n in (1, 2):
        grams = [g for ws in words for g in _ngrams(ws, n)]
        out[f"distinct_{n}"] = len(set(grams)) / len(grams) if grams else 0.0
    out["most_common"] = counts.most_common(top)
    return out


def worst_captions(records: Sequence[dict], n: int = 20) -> list[dict]:
    """The ``n`` caption records with the lowest per-image CIDEr (ties: lower BLEU-4 first)."""
    scored = [r for r in of_task(records, "caption") if isinstance(r.get("cider"), (int, float))]
    return sorted(scored, key=lambda r: (r["cider"], r.get("bleu_4", 0.0)))[:n]


def retrieval_failures(records: Sequence[dict], direction: str, n: int = 10) -> list[dict]:
    """Queries whose right answer was not ranked first, worst rank first."""
    key = f"{direction}_rank"
    failed = [r for r in of_task(records, "retrieval", direction) if r.get(key, 1) > 1]
    return sorted(failed, key=lambda r: -r[key])[:n]


def confused_answers(records: Sequence[dict], n: int = 10) -> list[tuple[str, str, int]]:
    """The most frequent (ground truth, predicted) pairs among wrong VQA answers."""
    pairs = Counter((r["gt"], r["answer"]) for r in of_task(records, "vqa")
                    if r.get("answer") != r.get("gt"))
    return [(gt, answer, count) for (gt, answer), count in pairs.most_common(n)]


def type_counts(records: Sequence[dict], key: str) -> dict[str, int]:
    """Number of VQA questions per ``question_type`` / ``answer_type``."""
    return dict(Counter(r.get(key, "?") for r in of_task(records, "vqa")))


def collapse_note(records: Sequence[dict], config: TrainConfig | None = None) -> str | None:
    """``monitor.collapse_verdict`` on the evaluated captions (thresholds: the run's
    ``train.collapse_share`` and ``train.collapse_distinct``), or None."""
    config = config or TrainConfig()
    captions = [r["caption"] for r in of_task(records, "caption")]
    return collapse_verdict(captions, config.collapse_share, config.collapse_distinct)


def training_checks(run_dir: Path) -> list[dict]:
    """The collapse checks training wrote (RUN/caption_checks.jsonl)."""
    log = Path(run_dir) / CHECKS_FILE
    if not log.is_file():
        return []
    return read_jsonl(log, required=("step", "check_distinct_share", "check_most_common_share"))
