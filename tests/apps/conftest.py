"""A tiny trained model, evaluated once, shared by the inference, index and server tests."""

import json

import pytest

from tiny import tiny_overrides


@pytest.fixture(scope="session")
def trained_run(tiny_shapes, tmp_path_factory):
    """RUN folder of a seconds-long training on ``tiny_shapes``."""
    from tuwen.apps.cli import main

    run = tmp_path_factory.mktemp("apps") / "run"
    sets = tiny_overrides(tiny_shapes, max_steps=8, save_every=8)
    assert main(["train", "configs/shapes.yaml", "--out", str(run),
                 *[arg for s in sets for arg in ("--set", s)]]) == 0
    return run


@pytest.fixture(scope="session")
def predictions(trained_run) -> list[dict]:
    """``tuwen eval``'s predictions for the test split (RUN/eval/test/predictions.jsonl)."""
    from tuwen.evaluation.evaluate import evaluate_run

    evaluate_run(trained_run, "test", show_progress=False)
    path = trained_run / "eval" / "test" / "predictions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="session")
def pipeline(trained_run):
    from tuwen.apps.pipeline import Pipeline

    return Pipeline.from_pretrained(trained_run / "model", device="cpu")
