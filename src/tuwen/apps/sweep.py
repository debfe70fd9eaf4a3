"""``tuwen sweep``: hyperparameter search with Optuna, one run directory per trial.

A grid (``--grid PATH=V1,V2``, every combination once) or a search (``--param PATH=SPEC``,
``--trials N``, the TPE sampler), optimising one metrics.json key of the validation split.
Trials report the metric from the validation callback during training (``train.eval_every``)
and the median pruner stops the weak ones. The study lives in ``SWEEP_DIR/study.db``
(SQLite): running the same command again resumes it; finished trials are never re-run and a
trial cut off by the interruption is run again with the same parameters.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuwen.apps.space import BaseConfig, Param, parse_choices, parse_param
from tuwen.apps.trial import check_metric, train_and_evaluate
from tuwen.errors import ConfigError, TuwenError

STUDY = "tuwen-sweep"
DB = "study.db"


@dataclass
class SweepSpec:
    """Everything that defines a sweep; a resumed sweep must have the same."""

    config: str | None
    overrides: list[str]
    metric: str
    direction: str = "maximize"
    split: str | None = None       # None: the config's validation split
    grid: list[str] = field(default_factory=list)
    params: list[str] = field(default_factory=list)
    trials: int | None = None
    prune: bool = True
    seed: int = 0

    @property
    def base(self) -> BaseConfig:
        return BaseConfig(self.config, self.overrides)

    def grid_space(self) -> dict[str, list[Any]]:
        return dict(parse_choices("--grid", text) for text in self.grid)

    def search_space(self) -> list[Param]:
        return [parse_param(text) for text in self.params]

    def n_trials(self) -> int:
        if self.grid:
            n = 1
            for values in self.grid_space().values():
                n *= len(values)
            return n
        return self.trials or 0


def check(spec: SweepSpec) -> str:
    """Every option against the config, before any trial; returns the split to score."""
    if bool(spec.grid) == bool(spec.params):
        raise ConfigError("tuwen sweep: give either --grid KEY=V1,V2 (a grid) or --param "
                          "KEY=SPEC with --trials N (a search)")
    if spec.params and not spec.trials:
        raise ConfigError("tuwen sweep: a --param search needs --trials N (N >= 1)")
    if spec.direction not in ("maximize", "minimize"):
        raise ConfigError(f"--direction {spec.direction!r}: expected maximize or minimize")
    base = spec.base
    config, _ = base.with_values({}, "--set")
    paths = list(spec.grid_space()) or [p.path for p in spec.search_space()]
    if len(set(paths)) != len(paths):
        raise ConfigError(f"tuwen sweep: a key is searched twice ({', '.join(paths)})")
    for path, values in spec.grid_space().items():
        base.check(path, values, "--grid")
    for param in spec.search_space():
        base.check(param.path, param.probe_values(), "--param")
    check_metric(spec.metric, config)
    return spec.split or config.data.val_split


def _optuna():
    try:
        import optuna
    except ImportError:
        raise TuwenError("tuwen sweep needs optuna: pip install 'tuwen[sweep]'") from None
    return optuna


def open_study(out: Path, spec: SweepSpec, *, create: bool):
    optuna = _optuna()

    storage = optuna.storages.RDBStorage(
        f"sqlite:///{(out / DB).absolute()}", engine_kwargs={"connect_args": {"timeout": 120}})
    # a grid is queued point by point (``requeue``): resuming and parallel workers then
    # never run a point twice; TPE samples a search
    sampler = optuna.samplers.TPESampler(seed=spec.seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if spec.prune \
        else optuna.pruners.NopPruner()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=STUDY, sampler=sampler,
                                pruner=pruner, direction=spec.direction, load_if_exists=create)
    return study, storage


def _same_spec(study, spec: SweepSpec, out: Path) -> None:
    saved = study.user_attrs.get("spec")
    if saved is None:
        study.set_user_attr("spec", asdict(spec))
    elif saved != asdict(spec):
        changed = sorted(k for k in saved if saved[k] != asdict(spec).get(k))
        raise ConfigError(f"{out} holds a different sweep (differs in {', '.join(changed)}); "
                          "use another --out or the same options to resume it")


def close_interrupted(study, storage) -> None:
    """Trials left running by a process that died: mark them failed and interrupted."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def _counted(trial) -> bool:
    """A finished trial that counts (a crash or a pruning does; an interruption does not)."""
    return trial.state.is_finished() and not trial.user_attrs.get("interrupted")


def requeue(study, spec: SweepSpec) -> int:
    """Queue what is left to run: the grid points without a finished trial, or (a search)
    the parameters of trials an interruption cut off. Returns how many were queued."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    waiting = [t.system_attrs.get("fixed_params", {}) for t in trials
               if t.state == TrialState.WAITING]
    if spec.grid:
        space = spec.grid_space()
        have = {tuple(p.get(k) for k in space) for p in waiting} | \
            {tuple(t.params.get(k) for k in space) for t in trials if _counted(t)}
        todo = [dict(zip(space, v)) for v in itertools.product(*space.values())
                if v not in have]
    else:
        done = set(study.user_attrs.get("requeued", []))
        cut = [t for t in trials if t.state == TrialState.FAIL and
               t.user_attrs.get("interrupted") and t.number not in done]
        study.set_user_attr("requeued", sorted(done | {t.number for t in cut}))
        todo = [t.params for t in cut]
    for params in todo:
        study.enqueue_trial(params, skip_if_exists=False)
    return len(todo)


def remaining(study, total: int) -> int:
    return max(0, total - sum(_counted(t) for t in study.get_trials(deepcopy=False)))


def objective_for(spec: SweepSpec, out: Path, split: str):
    import optuna

    space, grid = spec.search_space(), spec.grid_space()

    def objective(trial: optuna.Trial) -> float:
        values = {p.path: p.suggest(trial) for p in space} or \
            {path: trial.suggest_categorical(path, choices) for path, choices in grid.items()}
        run_dir = out / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        started = time.perf_counter()
        try:
            value = run_trial(trial, spec, values, run_dir, split)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except optuna.TrialPruned:
            trial.set_user_attr("wall_s", time.perf_counter() - started)
            raise
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}".splitlines()[0][:500])
            trial.set_user_attr("wall_s", time.perf_counter() - started)
            print(f"  trial {trial.number} failed: {trial.user_attrs['error']}", flush=True)
            raise
        trial.set_user_attr("wall_s", time.perf_counter() - started)
        return value

    return objective


def run_trial(trial, spec: SweepSpec, values: dict, run_dir: Path, split: str) -> float:
    import optuna

    config, _ = spec.base.with_values(values)

    def report(step: int, metrics: dict[str, float]) -> None:
        if spec.metric in metrics:
            trial.report(metrics[spec.metric], step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"{spec.metric}={metrics[spec.metric]:.4g} at step "
                                         f"{step}, below the median of earlier trials")

    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in values.items())
    print(f"  trial {trial.number}: {shown}", flush=True)
    outcome = train_and_evaluate(config, run_dir, split, report)
    trial.set_user_attr("metrics", outcome.metrics)
    trial.set_user_attr("images_per_sec", outcome.images_per_sec)
    if spec.metric not in outcome.metrics:
        raise ConfigError(f"metric {spec.metric!r} is not in {run_dir}/eval/{split}/metrics.json")
    print(f"  trial {trial.number}: {spec.metric}={outcome.metrics[spec.metric]:.4g}", flush=True)
    return outcome.metrics[spec.metric]


def worker(spec: SweepSpec, out: Path, split: str, n_trials: int) -> None:
    """One process's share of the trials (``--parallel``)."""
    import torch

    torch.set_num_threads(1)
    study, _ = open_study(out, spec, create=True)
    study.optimize(objective_for(spec, out, split), n_trials=n_trials, catch=(Exception,))


def sweep(spec: SweepSpec, out: str | Path, parallel: int = 1):
    """Run (or resume) the sweep; returns the optuna study."""
    split = check(spec)
    _optuna()
    if parallel < 1:
        raise ConfigError(f"--parallel {parallel}: need at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(asdict(spec), indent=2))
    study, storage = open_study(out, spec, create=True)
    _same_spec(study, spec, out)
    close_interrupted(study, storage)
    queued = requeue(study, spec)
    todo = remaining(study, spec.n_trials())
    print(f"sweep: {todo} of {spec.n_trials()} trials to run ({queued} newly queued), "
          f"{spec.metric} on {split}, {spec.direction}", flush=True)
    shares = [todo // parallel + (i < todo % parallel) for i in range(parallel)]
    shares = [n for n in shares if n]
    if len(shares) <= 1:
        study.optimize(objective_for(spec, out, split), n_trials=todo, catch=(Exception,))
    else:
        context = multiprocessing.get_context("spawn")
        procs = [context.Process(target=worker, args=(spec, out, split, n)) for n in shares]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    return open_study(out, spec, create=True)[0]
