"""The demo's quality bar from issue #2, on the real shapes data and the real time budget.

Slow (about 10 minutes on 2 cores): run with ``make test-slow``. Caption, VQA and
relative-position bars are asserted; the retrieval bars depend on how many steps the machine
manages in the time budget and are marked xfail, non-strict, so that reaching them shows as
XPASS. The runs that set these bars: docs/experiments/2026-11-29-demo-config-history.md.
"""

import os

import pytest
import torch

from tuwen.apps.cli import DEMO_MINUTES
from tuwen.apps.demo import run_demo
from tuwen.config import load_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_metrics(tmp_path_factory):
    """The demo as `tuwen demo` runs it: with every core (conftest pins tests to one)."""
    out = tmp_path_factory.mktemp("demo")
    config = load_config("configs/shapes.yaml",
                         [f"data.root={out / 'data'}", f"train.max_minutes={DEMO_MINUTES}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        return run_demo(out / "run", config, show_progress=False)["test"]
    finally:
        torch.set_num_threads(threads)


def test_caption_bar(demo_metrics):
    assert demo_metrics["caption"]["cider"] >= 1.5
    assert demo_metrics["caption"]["bleu_4"] >= 0.60


@pytest.mark.xfail(reason="59.4 at 744 steps, 58.7 in a 734-step demo without local "
                          "attention: close to the bar on a slow machine", strict=False)
def test_text_to_image_bar(demo_metrics):
    assert demo_metrics["retrieval"]["t2i_r1"] >= 55


@pytest.mark.xfail(reason="72.2 at 744 steps, 70.4 in a 734-step demo without local "
                          "attention: close to the bar on a slow machine", strict=False)
def test_image_to_text_bar(demo_metrics):
    assert demo_metrics["retrieval"]["i2t_r1"] >= 70


def test_vqa_bar(demo_metrics):
    assert demo_metrics["vqa"]["accuracy"] >= 85


def test_relative_position_bar(demo_metrics):
    assert demo_metrics["vqa"]["by_question_type"]["relative_position"] >= 65
