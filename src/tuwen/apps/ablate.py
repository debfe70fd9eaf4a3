"""``tuwen ablate``: one config, some keys varied, several seeds each, the same budget.

A variant is a combination of ``--axis`` values (one key each) and, with ``--variant
NAME=FILE.yaml``, one of several named overlays (partial configs: e.g. a small decoder against
a pretrained LM, which differ in several keys at once; a key that ``--set`` also gives keeps
the ``--set`` value). Every variant is trained with seeds ``0..N-1`` (``train.seed``)
into ``OUT/runs/<variant>/seed-<s>/`` (a normal run directory) and evaluated on one split.
A run already evaluated is reused, so an interrupted ablation continues where it stopped.
The report (``ablate_report``) gives mean +- std over seeds and paired-bootstrap intervals
of every pairwise difference.
"""

from __future__ import annotations

import itertools
import multiprocessing
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuwen.apps.space import BaseConfig, parse_choices, read_overlay, split_assignment
from tuwen.apps.trial import Outcome, is_finished, read_outcome, train_and_evaluate
from tuwen.config import Config
from tuwen.errors import ConfigError
from tuwen.evaluation.bootstrap import Scores, item_scores


@dataclass
class Variant:
    values: dict[str, Any]
    config: Config          # with seed 0; each seed is set on a copy
    dropped: list[str]

    @property
    def label(self) -> str:
        if len(self.values) == 1:  # the report's header names the one axis
            return str(next(iter(self.values.values())))
        return ", ".join(f"{p}={v}" for p, v in self.values.items())

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", ",".join(
            f"{p}={v}" for p, v in self.values.items()))


@dataclass
class Run:
    variant: Variant
    seed: int
    outcome: Outcome
    scores: Scores = field(default_factory=dict)


def plan(base: BaseConfig, axes: list[str], seeds: int,
         overlays: list[str] | None = None) -> list[Variant]:
    """Every combination of the axes' values (and of the named overlays), each checked
    against the config."""
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: need at least 1")
    named = [read_overlay("--variant", text) for text in overlays or []]
    if not axes and len(named) < 2:
        raise ConfigError("tuwen ablate: give at least one --axis KEY.PATH=V1,V2 or two "
                          "--variant NAME=FILE.yaml")
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise ConfigError(f"--variant: a name is given twice ({', '.join(names)})")
    parsed = [parse_choices("--axis", text) for text in axes]
    paths = [p for p, _ in parsed]
    if len(set(paths)) != len(paths):
        raise ConfigError(f"--axis: a key is given twice ({', '.join(paths)})")
    if "train.seed" in paths:
        raise ConfigError("--axis train.seed: seeds are set by --seeds")
    for path, values in parsed:
        base.check(path, values, "--axis")
    # a key the command line --set also gives keeps the --set value over an overlay's (e.g.
    # a local folder for the overlay's hub name)
    given = {split_assignment("--set", o)[0] for o in base.overrides}
    variants = []
    for overlay in named or [None]:
        for combo in itertools.product(*(values for _, values in parsed)):
            values = dict(zip(paths, combo))
            assigned = dict(values)
            if overlay is not None:
                clash = sorted(set(overlay[1]) & set(values))
                if clash:
                    raise ConfigError(f"--variant {overlay[0]} sets {', '.join(clash)}, "
                                      "which an --axis varies")
                assigned = {**{p: v for p, v in overlay[1].items() if p not in given},
                            **values}
                values = {"variant": overlay[0], **values}
            config, dropped = base.with_values(assigned, "--axis" if overlay is None
                                               else f"--variant {overlay[0]}")
            variants.append(Variant(values, config, dropped))
    return variants


def run_variant(variant: Variant, seed: int, out: Path, split: str) -> Run:
    run_dir = out / "runs" / variant.slug / f"seed-{seed}"
    if is_finished(run_dir, split):
        print(f"  {variant.label} seed {seed}: done before, reusing {run_dir}", flush=True)
        outcome = read_outcome(run_dir, split, wall_s=float("nan"))
    else:
        config = variant.config.model_copy(deep=True)
        config.train.seed = seed
        print(f"  {variant.label} seed {seed}: training into {run_dir}", flush=True)
        try:
            outcome = train_and_evaluate(config, run_dir, split)
        except Exception as err:  # said now: with --parallel the pool raises only at the end
            print(f"  {variant.label} seed {seed}: failed: {err}", flush=True)
            raise
        print(f"  {variant.label} seed {seed}: {outcome.steps} steps, "
              f"{outcome.wall_s / 60:.1f} min", flush=True)
    return Run(variant, seed, outcome, item_scores(run_dir / "eval" / split /
                                                   "predictions.jsonl"))


def _run_one(job: tuple[Variant, int, Path, str]) -> Run:
    import torch

    torch.set_num_threads(1)  # --parallel: one thread per process, no OpenMP contention
    return run_variant(*job)


def ablate(base: BaseConfig, axes: list[str], seeds: int, out: str | Path,
           split: str = "test", parallel: int = 1,
           overlays: list[str] | None = None) -> list[Run]:
    """Train and evaluate every variant and seed (``parallel`` runs at once, in processes)."""
    out = Path(out)
    variants = plan(base, axes, seeds, overlays)
    if parallel < 1:
        raise ConfigError(f"--parallel {parallel}: need at least 1")
    out.mkdir(parents=True, exist_ok=True)
    print(f"ablation: {len(variants)} variants x {seeds} seeds = {len(variants) * seeds} runs, "
          f"budget train.max_steps={variants[0].config.train.max_steps}, "
          f"train.max_minutes={variants[0].config.train.max_minutes}", flush=True)
    # seed by seed: with --parallel, the variants of one seed train side by side, so that a
    # budget in minutes meets the same machine load in each variant
    jobs = [(v, s, out, split) for s in range(seeds) for v in variants]
    if parallel == 1:
        return [run_variant(*job) for job in jobs]
    with multiprocessing.get_context("spawn").Pool(parallel, maxtasksperchild=1) as pool:
        return pool.map(_run_one, jobs, chunksize=1)
