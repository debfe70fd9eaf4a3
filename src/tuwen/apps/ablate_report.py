"""The ablation's report: mean +- std over seeds, paired-bootstrap differences, and
``ablation.md``, ``ablation.csv``, ``bootstrap.csv`` and ``ablation.png`` (bars with error
bars)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tuwen.apps.ablate import Run, Variant
from tuwen.evaluation.bootstrap import Difference, compare
from tuwen.evaluation.plots import png_bytes

HEADLINE = ("caption.cider", "caption.bleu_4", "retrieval.i2t_r1", "retrieval.t2i_r1",
            "vqa.accuracy")
TYPES = "vqa.by_question_type."
SPEED = ("images_per_sec", "params")
CHART = HEADLINE


@dataclass
class Row:
    variant: Variant
    seeds: int
    stats: dict[str, tuple[float, float]]  # metric -> (mean, std over seeds)


def _values(run: Run) -> dict[str, float]:
    out = {k: v for k, v in run.outcome.metrics.items() if k in HEADLINE or k.startswith(TYPES)}
    if run.outcome.images_per_sec is not None:
        out["images_per_sec"] = run.outcome.images_per_sec
    out["params"] = float(run.outcome.params)
    return out


def summarise(runs: list[Run]) -> tuple[list[Row], list[str]]:
    """One row per variant (in run order) and the metric columns every row has."""
    by_variant: dict[str, list[Run]] = {}
    for run in runs:
        by_variant.setdefault(run.variant.slug, []).append(run)
    rows = []
    for group in by_variant.values():
        values = [_values(r) for r in group]
        keys = set.intersection(*(set(v) for v in values))
        stats = {k: (float(np.mean([v[k] for v in values])),
                     float(np.std([v[k] for v in values], ddof=1)) if len(values) > 1 else 0.0)
                 for k in keys}
        rows.append(Row(group[0].variant, len(group), stats))
    common = set.intersection(*(set(r.stats) for r in rows)) if rows else set()
    order = [*HEADLINE, *sorted(k for k in common if k.startswith(TYPES)), *SPEED]
    return rows, [k for k in order if k in common]


def differences(runs: list[Run], resamples: int) -> list[Difference]:
    scores: dict[str, list] = {}
    for run in runs:
        scores.setdefault(run.variant.label, []).append(run.scores)
    return compare(scores, resamples=resamples)


def _cell(mean: float, std: float, metric: str) -> str:
    if metric == "params":
        return f"{mean / 1e6:.3f} M"
    digits = 3 if metric.startswith("caption.") else 1
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(rows: list[Row], columns: list[str], diffs: list[Difference],
             header: list[str]) -> str:
    lines = [*header, "", "| variant | seeds | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for row in rows:
        cells = [_cell(*row.stats[c], c) for c in columns]
        lines.append(f"| {row.variant.label} | {row.seeds} | " + " | ".join(cells) + " |")
    lines += ["", "Paired bootstrap over the test items (95 % interval of a - b; **bold**: the "
              "interval excludes zero, the difference is real at this level):", "",
              "| metric | a | b | a - b | 95 % interval | items |", "|---|---|---|---|---|---|"]
    for d in diffs:
        mark = "**" if d.excludes_zero else ""
        lines.append(f"| {d.metric} | {d.a} | {d.b} | {mark}{d.diff:+.3f}{mark} | "
                     f"[{d.low:+.3f}, {d.high:+.3f}] | {d.n_items} |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[Row], columns: list[str], path: Path) -> None:
    axes = list(rows[0].variant.values) if rows else []
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*axes, "seeds", *(f"{c}_{s}" for c in columns for s in ("mean", "std"))])
        for row in rows:
            w.writerow([*row.variant.values.values(), row.seeds,
                        *(x for c in columns for x in row.stats[c])])


def write_bootstrap_csv(diffs: list[Difference], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "a", "b", "mean_a", "mean_b", "diff", "low", "high", "n_items",
                    "excludes_zero"])
        for d in diffs:
            w.writerow([d.metric, d.a, d.b, d.mean_a, d.mean_b, d.diff, d.low, d.high,
                        d.n_items, d.excludes_zero])


def bar_chart(rows: list[Row], columns: list[str]) -> bytes:
    shown = [c for c in columns if c in CHART or c == "images_per_sec"]
    cols = min(3, len(shown)) or 1
    fig = Figure(figsize=(4.2 * cols, 3.2 * math.ceil(len(shown) / cols)), layout="constrained")
    labels = [r.variant.label for r in rows]
    for i, metric in enumerate(shown):
        ax = fig.add_subplot(math.ceil(len(shown) / cols), cols, i + 1)
        means = [r.stats[metric][0] for r in rows]
        stds = [r.stats[metric][1] for r in rows]
        ax.bar(range(len(rows)), means, yerr=stds, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(rows)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=10)
    fig.suptitle(f"mean ± std over {rows[0].seeds if rows else 0} seeds", fontsize=10)
    return png_bytes(fig)


def write_report(runs: list[Run], out: Path, header: list[str], resamples: int = 2000) -> str:
    rows, columns = summarise(runs)
    diffs = differences(runs, resamples)
    text = markdown(rows, columns, diffs, header)
    (out / "ablation.md").write_text(text)
    write_csv(rows, columns, out / "ablation.csv")
    write_bootstrap_csv(diffs, out / "bootstrap.csv")
    (out / "ablation.png").write_bytes(bar_chart(rows, columns))
    return text
