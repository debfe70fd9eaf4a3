import re

from tiny import tiny_overrides
from tuwen.config import TrainConfig, load_config
from tuwen.training.loop import train
from tuwen.training.progress import Progress
from tuwen.training.state import TrainState


def test_with_a_time_budget_the_bar_counts_its_minutes_not_max_steps(capsys):
    progress = Progress(TrainConfig(max_steps=100_000, max_minutes=30), TrainState())
    assert (progress.bar.total, progress.bar.unit) == (30, "min")
    state = TrainState(step=120, elapsed_s=90.0)
    progress.update(state)
    progress.show({"loss": 1.25, "samples_per_sec": 64.0})
    assert progress.bar.n == 1.5
    progress.close()
    text = capsys.readouterr().err
    assert "1.5/30 min" in text and "step=120/100000" in text and "loss=1.250" in text
    assert "/100000 [" not in text and "it/s" not in text


def test_the_time_bar_stops_at_the_budget_and_resumes_where_it_stood(capsys):
    tcfg = TrainConfig(max_steps=100, max_minutes=2)
    progress = Progress(tcfg, TrainState(step=40, elapsed_s=60.0))
    assert progress.bar.n == 1.0
    progress.update(TrainState(step=41, elapsed_s=150.0))
    assert progress.bar.n == 2.0  # a step that ends past the budget fills the bar, no more
    progress.close()


def test_with_only_max_steps_the_bar_counts_steps(capsys):
    progress = Progress(TrainConfig(max_steps=50), TrainState(step=10))
    assert (progress.bar.total, progress.bar.unit, progress.bar.n) == (50, "step", 10)
    progress.update(TrainState(step=11, elapsed_s=3.0))
    progress.show({"loss": 2.0, "samples_per_sec": 8.0})
    progress.close()
    text = capsys.readouterr().err
    assert "11/50" in text and "min" not in text and "step=" not in text


def test_a_timed_run_shows_the_budget_in_minutes(tiny_shapes, tmp_path, capsys):
    config = load_config(None, tiny_overrides(tiny_shapes, max_steps=2, max_minutes=5))
    train(config, tmp_path / "run")
    text = capsys.readouterr().err
    assert re.search(r"\d+\.\d/5 min", text) and "step=2/2" in text
    assert "2/2 [" not in text  # no step bar


def _stages(*budgets: dict) -> TrainConfig:
    return TrainConfig(max_steps=100_000, stages=[{"name": f"s{i}", **b}
                                                  for i, b in enumerate(budgets)])


def test_with_stages_the_bar_counts_their_budget_together(capsys):
    minutes = Progress(_stages({"max_minutes": 10}, {"max_minutes": 20}), TrainState())
    assert (minutes.bar.total, minutes.bar.unit) == (30, "min")
    minutes.close()
    steps = Progress(_stages({"max_steps": 150}, {"max_steps": 450}), TrainState(step=20))
    assert (steps.bar.total, steps.bar.unit, steps.bar.n) == (600, "step", 20)
    steps.stage("s0")
    steps.update(TrainState(step=21))
    steps.close()
    assert "21/600" in capsys.readouterr().err
    # a stage by minutes and one by steps: no total to show, and not max_steps's 100000
    mixed = Progress(_stages({"max_minutes": 10}, {"max_steps": 450}), TrainState())
    assert mixed.bar.total is None
    mixed.update(TrainState(step=3))
    mixed.close()
    assert "100000" not in capsys.readouterr().err
