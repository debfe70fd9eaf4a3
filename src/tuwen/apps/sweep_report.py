"""What a sweep leaves behind: ``results.csv`` (one row per trial), ``best.yaml`` (the full
config of the best trial), PNG plots (the metric against each parameter, the optimisation
history, parameter importances) and a summary table."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import yaml
from matplotlib.figure import Figure

from tuwen.apps.ablate_report import HEADLINE
from tuwen.apps.sweep import is_interrupted, is_void
from tuwen.evaluation.plots import png_bytes


def trial_state(trial) -> str:
    return "interrupted" if is_interrupted(trial) else trial.state.name.lower()


def trials(study) -> list:
    """Every worker's trials, less the redundant queued copies that never ran."""
    return [t for t in study.trials if not is_void(t)]


def results_rows(study, metric: str) -> list[dict]:
    params = sorted({p for t in trials(study) for p in t.params})
    rows = []
    for t in trials(study):
        metrics = t.user_attrs.get("metrics", {})
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values \
            else None
        rows.append({"trial": t.number, "state": trial_state(t),
                     **{p: t.params.get(p) for p in params},
                     metric: t.value if t.value is not None else metrics.get(metric),
                     "last_reported": last,
                     "pruned_at_step": max(t.intermediate_values)
                     if t.state.name == "PRUNED" and t.intermediate_values else None,
                     **{k: metrics.get(k) for k in HEADLINE if k != metric},
                     "images_per_sec": t.user_attrs.get("images_per_sec"),
                     "wall_s": t.user_attrs.get("wall_s"),
                     "error": t.user_attrs.get("error"),
                     "worker": t.user_attrs.get("worker"),
                     "run_dir": t.user_attrs.get("run_dir")})
    return rows


def write_results(rows: list[dict], path: Path) -> None:
    columns = list(rows[0]) if rows else ["trial", "state"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def best_trial(study):
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        return None
    sign = 1 if study.direction.name == "MAXIMIZE" else -1
    return max(complete, key=lambda t: sign * t.value)


def write_best(study, out: Path) -> Path | None:
    best = best_trial(study)
    if best is None:
        return None
    if "config" in best.user_attrs:  # the study holds it: the trial may have run elsewhere
        (out / "best.yaml").write_text(yaml.safe_dump(best.user_attrs["config"],
                                                      sort_keys=False))
    else:
        shutil.copyfile(Path(best.user_attrs["run_dir"]) / "config.yaml", out / "best.yaml")
    return out / "best.yaml"


def _numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def param_plot(study, metric: str) -> bytes:
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    params = sorted({p for t in study.trials for p in t.params})
    fig = Figure(figsize=(4 * max(len(params), 1), 3.2))
    for i, name in enumerate(params):
        ax = fig.add_subplot(1, max(len(params), 1), i + 1)
        xs = [t.params[name] for t in complete if name in t.params]
        ys = [t.value for t in complete if name in t.params]
        if xs and not _numeric(xs):
            labels = sorted({str(x) for x in xs})
            ax.set_xticks(range(len(labels)), labels, rotation=15, fontsize=8)
            xs = [labels.index(str(x)) for x in xs]
        elif xs and min(xs) > 0 and max(xs) / min(xs) >= 20:
            ax.set_xscale("log")
        ax.scatter(xs, ys, color="#4c72b0")
        ax.set_xlabel(name, fontsize=9)
        ax.set_ylabel(metric, fontsize=9)
    return png_bytes(fig)


def history_plot(study, metric: str) -> bytes:
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    better = max if study.direction.name == "MAXIMIZE" else min
    best, running = [], None
    for t in complete:
        running = t.value if running is None else better(running, t.value)
        best.append(running)
    ax.scatter([t.number for t in complete], [t.value for t in complete], label="trial")
    ax.step([t.number for t in complete], best, where="post", color="#c44e52", label="best")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    return png_bytes(fig)


def importances(study) -> dict[str, float]:
    """PED-ANOVA importances of the complete trials ({} when they cannot tell)."""
    import optuna

    try:
        return optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}


def importance_plot(values: dict[str, float]) -> bytes:
    fig = Figure(figsize=(6, 0.6 * max(len(values), 1) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    names = list(values)[::-1]
    ax.barh(names, [values[n] for n in names], color="#55a868")
    ax.set_xlabel("importance (PED-ANOVA, normalised)")
    if not values:
        ax.text(0.5, 0.5, "too few complete trials to tell", ha="center", va="center",
                transform=ax.transAxes)
    return png_bytes(fig)


def summary(rows: list[dict], metric: str, direction: str, top: int = 10) -> str:
    done = [r for r in rows if isinstance(r[metric], float) and math.isfinite(r[metric])
            and r["state"] == "complete"]
    done.sort(key=lambda r: r[metric], reverse=direction == "maximize")
    skip = {"state", "last_reported", "pruned_at_step", "error", "worker", "run_dir", metric,
            *HEADLINE, "images_per_sec", "trial"}
    params = [k for k in (rows[0] if rows else {}) if k not in skip and k != "wall_s"]
    head = ["trial", *params, metric, "wall_s"]
    lines = ["  ".join(f"{h:>14}" for h in head)]
    for r in done[:top]:
        cells = [r["trial"], *(r[p] for p in params), r[metric], r["wall_s"]]
        lines.append("  ".join(f"{c:>14.4g}" if isinstance(c, float) else f"{c!s:>14}"
                               for c in cells))
    counts = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append("trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines)


def write_outputs(study, out: Path, metric: str, direction: str) -> str:
    rows = results_rows(study, metric)
    write_results(rows, out / "results.csv")
    best = write_best(study, out)
    (out / "plot_params.png").write_bytes(param_plot(study, metric))
    (out / "plot_history.png").write_bytes(history_plot(study, metric))
    (out / "plot_importance.png").write_bytes(importance_plot(importances(study)))
    text = summary(rows, metric, direction)
    return text + (f"\nbest config: {best}" if best else "\nno trial completed")
