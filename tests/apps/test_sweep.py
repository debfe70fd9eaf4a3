"""``tuwen sweep``: a grid on the tiny shapes data, resume, pruning, failures, bad input."""

import csv

import pytest
import yaml

from tiny import tiny_overrides
from tuwen.apps import sweep as sweep_module
from tuwen.apps.cli import main
from tuwen.apps.sweep import SweepSpec, sweep
from tuwen.apps.sweep_report import trial_state, write_outputs
from tuwen.apps.trial import Outcome
from tuwen.config import save_config
from tuwen.errors import ConfigError

METRIC = "retrieval.t2i_r1"
LRS = "train.lr=1e-4,3e-4,1e-3"


@pytest.fixture
def no_java(monkeypatch):
    monkeypatch.setenv("PATH", "")  # python PTB tokenisation, no METEOR JVM: seconds, not minutes


def _rows(out):
    return list(csv.DictReader((out / "results.csv").open()))


def test_three_trial_grid_writes_every_output(tiny_shapes, tmp_path, no_java, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "configs/shapes.yaml", "--out", str(out), "--grid", LRS, "--metric", METRIC,
            "--no-prune"]
    for s in tiny_overrides(tiny_shapes) + ["train.max_steps=2", "train.eval_every=2",
                                           "eval.decoding=greedy", "eval.max_new_tokens=6"]:
        args += ["--set", s]
    assert main(args) == 0
    rows = _rows(out)
    assert sorted(float(r["train.lr"]) for r in rows) == [1e-4, 3e-4, 1e-3]
    assert {r["state"] for r in rows} == {"complete"}
    assert all(0 <= float(r[METRIC]) <= 100 and float(r["wall_s"]) > 0 for r in rows)
    assert all(r["last_reported"] != "" for r in rows)  # the validation callback reported
    best = max(rows, key=lambda r: float(r[METRIC]))
    assert yaml.safe_load((out / "best.yaml").read_text())["train"]["lr"] == \
        float(best["train.lr"])
    for name in ("plot_params.png", "plot_history.png", "plot_importance.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    for r in rows:  # each trial is a normal run directory
        run = tmp_path / r["run_dir"]
        assert (run / "config.yaml").is_file() and (run / "model" / "model.safetensors").is_file()
        assert (run / "eval" / "val" / "metrics.json").is_file()
    assert (out / "study.db").is_file()
    assert "trials: 3 complete" in capsys.readouterr().out


class FakeRuns:
    """Stands in for train + evaluate: writes the run's config, reports, returns a metric."""

    def __init__(self, values=(50.0, 60.0, 70.0, 80.0), fail_at=None, stop_at=None):
        self.values, self.fail_at, self.stop_at, self.trained = values, fail_at, stop_at, []

    def __call__(self, config, run_dir, split, report=None):
        call = len(self.trained)
        self.trained.append(run_dir.name)
        if call == self.stop_at:
            raise KeyboardInterrupt
        if call == self.fail_at:
            raise RuntimeError("out of memory in the decoder")
        run_dir.mkdir(parents=True)
        save_config(config, run_dir / "config.yaml")
        for step in (1, 2):
            report(step, {METRIC: self.values[call]})
        return Outcome(run_dir, {METRIC: self.values[call]}, 0.1, 2, 10.0, 1000)


def _spec(tiny_shapes, grid=LRS, **kw):
    return SweepSpec(config="configs/shapes.yaml", overrides=tiny_overrides(tiny_shapes),
                     metric=METRIC, grid=[grid], **kw)


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(
        tiny_shapes, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    first = FakeRuns(stop_at=1)
    monkeypatch.setattr(sweep_module, "train_and_evaluate", first)
    with pytest.raises(KeyboardInterrupt):
        sweep(_spec(tiny_shapes), out)
    assert first.trained == ["trial-0000", "trial-0001"]

    again = FakeRuns()
    monkeypatch.setattr(sweep_module, "train_and_evaluate", again)
    study = sweep(_spec(tiny_shapes), out)
    assert again.trained == ["trial-0002", "trial-0003"]  # the queued one, the cut-off one again
    assert [trial_state(t) for t in study.trials] == ["complete", "interrupted", "complete",
                                                       "complete"]
    assert sorted(t.params["train.lr"] for t in study.trials
                  if t.state.name == "COMPLETE") == [1e-4, 3e-4, 1e-3]
    assert study.trials[3].params == study.trials[1].params
    write_outputs(study, out, METRIC, "maximize")
    assert sorted(r["state"] for r in _rows(out)) == ["complete"] * 3 + ["interrupted"]

    done = FakeRuns()  # a finished sweep run again trains nothing
    monkeypatch.setattr(sweep_module, "train_and_evaluate", done)
    sweep(_spec(tiny_shapes), out)
    assert done.trained == []


def test_pruning_stops_a_trial_that_reports_a_bad_metric(tiny_shapes, tmp_path, monkeypatch):
    runs = FakeRuns(values=(50.0, 60.0, 0.0))
    monkeypatch.setattr(sweep_module, "train_and_evaluate", runs)
    study = sweep(_spec(tiny_shapes), tmp_path / "sweep")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert study.trials[2].intermediate_values == {1: 0.0}  # stopped at its first report


def test_a_crashing_trial_is_recorded_as_failed_and_the_sweep_goes_on(
        tiny_shapes, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_module, "train_and_evaluate", FakeRuns(fail_at=0))
    out = tmp_path / "sweep"
    study = sweep(_spec(tiny_shapes), out)
    write_outputs(study, out, METRIC, "maximize")
    rows = sorted(_rows(out), key=lambda r: int(r["trial"]))
    assert [r["state"] for r in rows] == ["fail", "complete", "complete"]
    assert rows[0]["error"] == "RuntimeError: out of memory in the decoder"


def test_search_samples_inside_the_ranges(tiny_shapes, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_module, "train_and_evaluate", FakeRuns())
    spec = SweepSpec(config="configs/shapes.yaml", overrides=tiny_overrides(tiny_shapes),
                     metric=METRIC, trials=4, prune=False,
                     params=["train.lr=log:1e-5:1e-2", "train.batch_size=int:4:16",
                             "model.fusion.type=choice:concat,weighted_sum,cross_attention"])
    study = sweep(spec, tmp_path / "sweep")
    assert len(study.trials) == 4
    for t in study.trials:
        assert 1e-5 <= t.params["train.lr"] <= 1e-2 and 4 <= t.params["train.batch_size"] <= 16
        assert t.params["model.fusion.type"] in ("concat", "weighted_sum", "cross_attention")


@pytest.mark.parametrize("options, message", [
    ({"grid": ["train.lrr=1e-4,1e-3"]}, "train.lrr: no such config key"),
    ({"grid": ["train.batch_size=8,large"]}, "train.batch_size"),
    ({"params": ["model.fusion.type=choice:"], "trials": 2}, "empty choice list"),
    ({"params": ["train.lr=log:1e-3:1e-5"], "trials": 2}, "LOW < HIGH"),
    ({"grid": [LRS], "metric": "retrieval.t2i_r3"}, "'retrieval.t2i_r3': no evaluation"),
    ({"grid": [LRS], "metric": "vqa.accuracy", "overrides": ["eval.tasks=[caption]"]},
     "needs the vqa evaluation"),
    ({"params": ["train.lr=log:1e-5:1e-2"]}, "needs --trials"),
])
def test_bad_input_is_one_error_before_any_trial(tiny_shapes, tmp_path, options, message):
    fields = {"config": "configs/shapes.yaml", "metric": METRIC,
              "overrides": tiny_overrides(tiny_shapes)}
    fields["overrides"] = fields["overrides"] + options.pop("overrides", [])
    with pytest.raises(ConfigError, match=message):
        sweep(SweepSpec(**{**fields, **options}), tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()


def test_resuming_with_other_options_is_refused(tiny_shapes, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_module, "train_and_evaluate", FakeRuns())
    sweep(_spec(tiny_shapes), tmp_path / "sweep")
    with pytest.raises(ConfigError, match="holds a different sweep"):
        sweep(_spec(tiny_shapes, grid="train.lr=1e-2,1e-3"), tmp_path / "sweep")


@pytest.mark.slow
def test_parallel_trials_in_processes(tiny_shapes, tmp_path, no_java):
    out = tmp_path / "sweep"
    spec = SweepSpec(config="configs/shapes.yaml", metric=METRIC, grid=["train.lr=1e-4,1e-3"],
                     overrides=tiny_overrides(tiny_shapes) + ["train.max_steps=2",
                                                              "eval.decoding=greedy"])
    study = sweep(spec, out, workers=2)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE"]
