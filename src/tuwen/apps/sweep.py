"""``tuwen sweep``: hyperparameter search with Optuna, one run directory per trial.

A grid (``--grid PATH=V1,V2``, every combination once) or a search (``--param PATH=SPEC``,
``--trials N``, the TPE sampler), optimising one metrics.json key of the validation split.
Trials report the metric from the validation callback during training (``train.eval_every``)
and the median pruner stops the weak ones.

The study lives in ``SWEEP_DIR/study.db`` (SQLite) or in any Optuna storage (``--storage
URL``, e.g. PostgreSQL shared by several machines). Every worker, on this machine or another,
runs the same loop (:func:`work`): queue what is left, take a queued trial, train it, until no
trial is left to run or running anywhere. Running the same command again resumes the study.

How the workers never run a grid point twice, without a lock:

* a grid is queued point by point; Optuna hands a queued trial to one worker only (the
  WAITING -> RUNNING change is a row update that one transaction wins);
* two workers that queue the same point at once leave two queued copies: the one that
  starts second sees the older copy and ends at once as ``void`` (results leave it out);
* a running trial records a heartbeat; one without a heartbeat for ``3 x --heartbeat``
  seconds (its worker was killed, or its machine lost) is failed by the next worker that
  looks, counted as ``interrupted``, and its parameters are queued again.
"""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing
import os
import socket
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuwen.apps.space import BaseConfig, Param, parse_choices, parse_param
from tuwen.apps.trial import check_metric, train_and_evaluate
from tuwen.errors import ConfigError, TuwenError

STUDY = "tuwen-sweep"
DB = "study.db"
HEARTBEAT_S = 10  # a running trial's heartbeat; it is stale after three missed ones
STALE_BEATS = 3


@dataclass
class SweepSpec:
    """Everything that defines a sweep; a resumed sweep, and every worker, must have the same."""

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

    def grid_points(self) -> list[dict[str, Any]]:
        space = self.grid_space()
        return [dict(zip(space, values)) for values in itertools.product(*space.values())]

    def n_trials(self) -> int:
        return len(self.grid_points()) if self.grid else self.trials or 0


@dataclass(frozen=True)
class Storage:
    """Where the study lives: an Optuna storage URL (None: ``SWEEP_DIR/study.db``) and the
    heartbeat of running trials, in seconds."""

    url: str | None = None
    heartbeat: int = HEARTBEAT_S

    def resolved(self, out: Path) -> str:
        if self.url is None:
            return f"sqlite:///{(out / DB).absolute()}"
        # SQLAlchemy's plain postgresql:// means psycopg2; the sweep extra brings psycopg 3
        if self.url.startswith("postgresql://"):
            return "postgresql+psycopg://" + self.url.removeprefix("postgresql://")
        return self.url

    def shown(self) -> str:
        """The URL without its password, for messages."""
        if self.url is None:
            return DB
        scheme, sep, rest = self.url.partition("://")
        user, at, host = rest.rpartition("@")
        if at and ":" in user:
            user = user.split(":", 1)[0] + ":***"
        return f"{scheme}{sep}{user}{at}{host}"


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


def open_study(out: Path, spec: SweepSpec, storage: Storage = Storage(), worker: int = 0):
    """The study (created if new) through an RDB storage that records heartbeats."""
    optuna = _optuna()
    import sqlalchemy.exc

    url = storage.resolved(out)
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else \
        {"pool_pre_ping": True}
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are printed by the objective
    try:
        for attempt in range(5):
            try:
                with warnings.catch_warnings():  # heartbeats are "experimental" (optuna 2.9)
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    rdb = optuna.storages.RDBStorage(url, engine_kwargs=engine,
                                                     heartbeat_interval=storage.heartbeat,
                                                     grace_period=STALE_BEATS * storage.heartbeat)
                return optuna.create_study(storage=rdb, study_name=STUDY,
                                           sampler=_sampler(spec, worker), pruner=_pruner(spec),
                                           direction=spec.direction, load_if_exists=True)
            except sqlalchemy.exc.IntegrityError:
                # Workers that start together on a new database all create its tables;
                # PostgreSQL's CREATE TABLE IF NOT EXISTS is not atomic, and the losers see a
                # duplicate key. The tables exist now: open again.
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
    except ModuleNotFoundError as err:
        raise TuwenError(f"--storage {storage.shown()}: needs the database driver {err.name!r} "
                         "(PostgreSQL: pip install 'tuwen[postgres]')") from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TuwenError(f"--storage {storage.shown()}: cannot open the study ({first})") \
            from None


def _sampler(spec: SweepSpec, worker: int):
    import optuna

    # Workers must not draw the same random start points: each gets its own seed. Worker 0
    # keeps --seed, so a one-process search is reproducible.
    seed = spec.seed if worker == 0 else spec.seed * 1_000_003 + worker
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(spec: SweepSpec):
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=2) if spec.prune \
        else optuna.pruners.NopPruner()


def sampler_index(storage: Storage, index: int) -> int:
    """Which seed a worker's sampler gets: in SWEEP_DIR/study.db, the worker's index on this
    machine (0 keeps --seed); in a storage other machines may share, a number of this
    process and host, as no worker knows how many others start at the same moment."""
    if storage.url is None:
        return index
    return abs(hash((socket.gethostname(), os.getpid()))) % 1_000_000 + 1


def _same_spec(study, spec: SweepSpec, out: Path) -> None:
    saved = study.user_attrs.get("spec")
    if saved is None:
        study.set_user_attr("spec", asdict(spec))
    elif saved != asdict(spec):
        changed = sorted(k for k in saved if saved[k] != asdict(spec).get(k))
        raise ConfigError(f"{out} holds a different sweep (differs in {', '.join(changed)}); "
                          "use another --out or the same options to resume it")


# ------------------------------------------------------------------ the state of a trial

def is_void(trial) -> bool:
    """A queued copy that another worker's copy made redundant: never ran, not a result."""
    return "void" in trial.user_attrs


def is_interrupted(trial) -> bool:
    """Failed without an error of its own: Ctrl-C, SIGTERM, or a worker that stopped
    beating (killed, machine lost). Its parameters are run again."""
    return trial.state.name == "FAIL" and not is_void(trial) and "error" not in trial.user_attrs


def counts(trial) -> bool:
    """A finished trial that counts (complete, pruned, crashed)."""
    return trial.state.is_finished() and not is_void(trial) and not is_interrupted(trial)


def point(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def trial_point(trial) -> str:
    """The parameters a trial runs (a queued one: those it was queued with)."""
    return point(trial.system_attrs.get("fixed_params", trial.params))


def taken(trial) -> bool:
    """Its parameters are being run or were run, or will be by a worker that takes it."""
    return not is_void(trial) and (trial.state.name in ("WAITING", "RUNNING") or counts(trial))


def requeue(study, spec: SweepSpec) -> int:
    """Queue what is left to run: the grid points that no trial has taken, or (a search)
    the parameters of trials an interruption cut off. Returns how many were queued."""
    trials = study.get_trials(deepcopy=False)
    have = {trial_point(t) for t in trials if taken(t)}
    wanted = spec.grid_points() if spec.grid else \
        [t.params for t in trials if is_interrupted(t)]
    todo = {}
    for params in wanted:
        if point(params) not in have:
            todo.setdefault(point(params), params)
    for params in todo.values():
        study.enqueue_trial(params, skip_if_exists=False)
    return len(todo)


def remaining(study, total: int) -> int:
    return max(0, total - sum(counts(t) for t in study.get_trials(deepcopy=False)))


def void_reason(trial, spec: SweepSpec) -> str | None:
    """Why this just-started trial must not run: an older trial has its point, or it is a
    grid trial that did not come from the queue (another worker took the last point)."""
    trials = trial.study.get_trials(deepcopy=False)
    me = next(t for t in trials if t.number == trial.number)
    if "fixed_params" not in me.system_attrs:
        return "the grid queue was empty" if spec.grid else None
    older = [t.number for t in trials if t.number < me.number and taken(t) and
             trial_point(t) == trial_point(me)]
    return f"a copy of trial {older[0]}" if older else None


class Void(Exception):
    """Ends a redundant trial before it trains."""


# ------------------------------------------------------------------ running trials

def objective_for(spec: SweepSpec, out: Path, split: str):
    import optuna

    space, grid = spec.search_space(), spec.grid_space()
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: optuna.Trial) -> float:
        if (reason := void_reason(trial, spec)) is not None:
            trial.set_user_attr("void", reason)
            raise Void(reason)
        values = {p.path: p.suggest(trial) for p in space} or \
            {path: trial.suggest_categorical(path, choices) for path, choices in grid.items()}
        run_dir = out / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", worker)
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
    # the resolved config travels with the study: best.yaml is written on any machine
    trial.set_user_attr("config", config.model_dump(mode="json"))

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
    value = outcome.metrics[spec.metric]
    if not math.isfinite(value):  # an error of its own: a NaN is not run again
        raise ValueError(f"{spec.metric} is {value}")
    print(f"  trial {trial.number}: {spec.metric}={value:.4g}", flush=True)
    return value


def fail_stale(study) -> None:
    """Fail the running trials whose worker stopped beating (they count as interrupted)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def next_action(study, spec: SweepSpec) -> str:
    """"run" a trial, "wait" for trials running elsewhere (one may die and be queued again)
    or "done"."""
    trials = [t for t in study.get_trials(deepcopy=False) if not is_void(t)]
    states = [t.state.name for t in trials]
    if "WAITING" in states:
        return "run"
    running = states.count("RUNNING")
    if not spec.grid and sum(map(counts, trials)) + running < (spec.trials or 0):
        return "run"
    return "wait" if running else "done"


def work(study, spec: SweepSpec, out: Path, split: str, heartbeat: int) -> None:
    """One worker: run trials until none is left to run or running anywhere."""
    objective = objective_for(spec, out, split)
    waiting_shown = False
    while True:
        fail_stale(study)
        requeue(study, spec)
        action = next_action(study, spec)
        if action == "done":
            return
        if action == "wait":
            if not waiting_shown:
                print(f"  waiting for trials running in other workers (one silent for "
                      f"{STALE_BEATS * heartbeat} s is run again here)", flush=True)
                waiting_shown = True
            time.sleep(min(heartbeat, 5))
            continue
        waiting_shown = False
        study.optimize(objective, n_trials=1, catch=(Exception,))


def worker(spec: SweepSpec, out: Path, split: str, storage: Storage, index: int) -> None:
    """A ``--workers`` process: one thread, its own sampler seed."""
    import torch

    torch.set_num_threads(1)
    study = open_study(out, spec, storage, worker=sampler_index(storage, index))
    work(study, spec, out, split, storage.heartbeat)


def sweep(spec: SweepSpec, out: str | Path, workers: int = 1, storage: Storage = Storage()):
    """Run (or resume, or join) the sweep; returns the optuna study."""
    split = check(spec)
    _optuna()
    if workers < 1:
        raise ConfigError(f"--workers {workers}: need at least 1")
    if storage.heartbeat < 1:
        raise ConfigError(f"--heartbeat {storage.heartbeat}: need at least 1 second")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(asdict(spec), indent=2))
    study = open_study(out, spec, storage, worker=sampler_index(storage, 0))
    _same_spec(study, spec, out)
    queued = requeue(study, spec)
    todo = remaining(study, spec.n_trials())
    print(f"sweep: {todo} of {spec.n_trials()} trials to run ({queued} newly queued), "
          f"{spec.metric} on {split}, {spec.direction}; study in {storage.shown()}", flush=True)
    if workers == 1:
        work(study, spec, out, split, storage.heartbeat)
    else:
        context = multiprocessing.get_context("spawn")
        procs = [context.Process(target=worker, args=(spec, out, split, storage, i))
                 for i in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    return open_study(out, spec, storage)
