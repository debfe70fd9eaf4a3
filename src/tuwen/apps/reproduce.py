"""``tuwen reproduce MODEL --out DIR``: retrain a model from its card, evaluate, compare.

The card (``evaluation.model_card``) holds the resolved config and a fingerprint of each data
source. The data is fingerprinted again first: a source whose files or image list differ
is a refusal naming them, before any training. Then the run is trained into ``DIR`` with
the card's config, evaluated on every split the card has metrics for (the same tasks), and
each metric is set beside the card's; the weights are compared byte for byte (a
deterministic run on the same machine and the same code gives equal weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tuwen import fsio
from tuwen.apps.training import run_training
from tuwen.config import Config, config_from_dict
from tuwen.errors import TuwenError
from tuwen.evaluation.evaluate import evaluate_run
from tuwen.evaluation.model_card import (
    code_version,
    config_of,
    flat_metrics,
    read_card,
    run_splits,
    source_fingerprints,
)
from tuwen.model_files import CARD_FILE, WEIGHTS_FILE
from tuwen.tasks.table import TASKS


class DataChanged(TuwenError):
    """The data a card was trained on is not the data found now."""


@dataclass
class MetricRow:
    split: str
    name: str
    then: float
    now: float | None


@dataclass
class Reproduction:
    out: Path
    rows: list[MetricRow]
    weights_equal: bool
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        lines = [f"{'split':<8} {'metric':<44} {'card':>10} {'now':>10} {'diff':>10}"]
        for row in self.rows:
            now = "missing" if row.now is None else f"{row.now:.4f}"
            diff = "" if row.now is None else f"{row.now - row.then:+.4f}"
            lines.append(f"{row.split:<8} {row.name:<44} {row.then:>10.4f} {now:>10} {diff:>10}")
        equal = "bitwise equal" if self.weights_equal else "different"
        lines.append(f"weights (model.safetensors): {equal}")
        return "\n".join([*(f"note: {n}" for n in self.notes), *lines])


def check_data(card: dict, config: Config, where: Path) -> None:
    """Refuse when a data source's fingerprint differs from the card's."""
    if not card["tuwen"].get("data"):
        raise DataChanged(f"{where}: the card holds no data fingerprint; not reproducing")
    then = {s["name"]: s for s in card["tuwen"]["data"]}
    problems = []
    for now in source_fingerprints(config.data, run_splits(config)):
        old = then.get(now["name"])
        if old is None:
            problems.append(f"source {now['name']!r} is not on the card")
            continue
        files = sorted(set(old["files"]) | set(now["files"]))
        changed = [f for f in files if old["files"].get(f) != now["files"].get(f)]
        if changed:
            problems.append(f"{now['name']}: {', '.join(changed[:3])} differ")
        if old["images"] != now["images"]:
            problems.append(f"{now['name']}: the image list differs ({old['images']['count']} "
                            f"images on the card, {now['images']['count']} now)")
    if problems:
        raise DataChanged(f"{where}: the data in {config.data.root} is not the data the card "
                          f"was trained on ({'; '.join(problems)}); not reproducing")


def _notes(card: dict, config: Config) -> list[str]:
    tuwen, now = card["tuwen"], code_version()
    notes = []
    for key in ("version", "commit", "dirty"):
        if tuwen.get(key) != now[key]:
            notes.append(f"tuwen {key} {tuwen.get(key)} on the card, {now[key]} now: the "
                         "weights may differ")
    training = tuwen.get("training", {})
    if training.get("stopped_by") == "max_minutes":
        config.train.max_steps, config.train.max_minutes = training["steps"], None
        notes.append(f"the card's run stopped on its time budget at step {training['steps']}; "
                     "reproduced for that many steps (its schedule spans them: weights differ)")
    return notes


def load_card_config(model_dir: Path, data_root: str | Path | None) -> tuple[dict, Config]:
    card = read_card(model_dir)
    if card is None:
        raise TuwenError(f"{model_dir / CARD_FILE}: no model card; only a model trained with "
                         "this version of tuwen can be reproduced")
    raw = config_of(card, model_dir / CARD_FILE)
    raw["data"]["root"] = str(data_root or card["tuwen"]["data_root"])
    return card, config_from_dict(raw, f"{model_dir / CARD_FILE} (tuwen.config)")


def reproduce(model_dir: str | Path, out: str | Path, *, data_root: str | Path | None = None,
              show_progress: bool = True) -> Reproduction:
    model_dir, out = Path(model_dir), Path(out)
    card, config = load_card_config(model_dir, data_root)
    if out.exists() and any(out.iterdir()):
        raise TuwenError(f"{out}: not empty; reproduce into a new folder")
    notes = _notes(card, config)
    check_data(card, config, model_dir / CARD_FILE)
    result = run_training(config, out, show_progress=show_progress)
    rows = []
    for split, then in card["tuwen"].get("metrics", {}).items():
        sections = {name.split(".")[0] for name in then}  # caption_greedy: caption's, ...
        tasks = [t.metric for t in TASKS.values() if t.metric and any(
            s == t.metric or s.startswith(f"{t.metric}_") for s in sections)]
        now = flat_metrics(evaluate_run(out, split, tasks=tasks, show_progress=show_progress))
        rows += [MetricRow(split, name, value, now.get(name)) for name, value in then.items()]
    equal = fsio.sha256(model_dir / WEIGHTS_FILE) == fsio.sha256(result.model_dir / WEIGHTS_FILE)
    return Reproduction(out, rows, equal, notes)
