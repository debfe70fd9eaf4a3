"""Training-curve panels are titled by what they plot, in the figure and in report.html."""

import json
import re

import pytest

from tuwen.evaluation import plots
from tuwen.evaluation.report import write_report

TRAIN = {"epoch": 0, "lr": 1e-3, "loss": 3.0, "loss_caption": 2.0, "loss_vqa": 1.0,
         "grad_norm": 4.0, "grad_norm_caption": 2.5, "grad_norm_vqa": 1.5,
         "samples_per_sec": 100.0, "elapsed_s": 1.0}
VALIDATION = {"val_loss": 3.5, "val_loss_caption": 2.2, "val_caption_identical_share": 0.25,
              "val_caption_distinct_captions": 6.0, "val_retrieval.i2t_r1": 40.0,
              "val_retrieval.i2t_median_rank": 2.0, "val_vqa.accuracy": 55.0}


def records(validation: bool) -> list[dict]:
    return [{"step": step, **TRAIN, **(VALIDATION if validation and step % 4 == 0 else {})}
            for step in (2, 4, 6, 8)]


def test_gradient_norms_are_not_titled_validation():
    panels = {p.title: p.keys for p in plots.curve_panels(records(validation=False))}
    assert panels == {
        "training loss": ("loss", "loss_caption", "loss_vqa"),
        "learning rate": ("lr",),
        "gradient norm (total before clipping; weighted per task)":
            ("grad_norm", "grad_norm_caption", "grad_norm_vqa")}
    assert not any("validation" in title for title in panels)


def test_each_validation_kind_has_its_own_panel():
    panels = {p.title: (p.ylabel, p.keys) for p in plots.curve_panels(records(validation=True))}
    assert panels["validation loss"] == ("loss", ("val_loss", "val_loss_caption"))
    assert panels["validation: greedy caption diversity"] == (
        "share", ("val_caption_identical_share",))
    assert panels["validation: distinct greedy captions"][1] == ("val_caption_distinct_captions",)
    assert panels["validation: retrieval recall"] == ("recall %", ("val_retrieval.i2t_r1",))
    assert panels["validation: retrieval rank"][1] == ("val_retrieval.i2t_median_rank",)
    assert panels["validation: VQA accuracy"] == ("accuracy %", ("val_vqa.accuracy",))
    plotted = [k for _, keys in panels.values() for k in keys]
    assert len(plotted) == len(set(plotted))  # every key in exactly one panel
    assert not plots.BOOKKEEPING & set(plotted)


def test_the_figure_axes_carry_the_panel_titles_labels_and_keys():
    logged = records(validation=True)
    panels = plots.curve_panels(logged)
    fig = plots.curves_figure(logged)
    drawn = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in drawn] == [p.title for p in panels]
    for ax, panel in zip(drawn, panels):
        assert ax.get_xlabel() == "step"
        assert ax.get_ylabel().startswith(panel.ylabel)
        assert [t.get_text() for t in ax.get_legend().get_texts()] == list(panel.keys)
    loss_axes = drawn[0]
    assert loss_axes.get_yscale() == "log" and loss_axes.get_ylabel() == "loss (log scale)"
    assert plots.training_curves(logged).startswith(b"\x89PNG")


def _curves_section(html: str) -> str:
    return re.search(r'<section id="curves">(.*?)</section>', html, re.S).group(1)


@pytest.mark.parametrize("validation", [False, True])
def test_report_names_each_curve_panel(tmp_path, validation):
    run = tmp_path / "run"
    eval_dir = run / "eval" / "test"
    eval_dir.mkdir(parents=True)
    (eval_dir / "metrics.json").write_text(json.dumps({"split": "test"}))
    logged = records(validation)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logged))
    section = _curves_section(write_report(eval_dir).read_text())
    titles = [p.title for p in plots.curve_panels(logged)]
    alt = re.search(r'<img class="figure" alt="([^"]*)"', section).group(1)
    assert alt == "training curves: " + "; ".join(titles)
    assert re.findall(r"<li><b>(.*?)</b>", section) == titles
    assert ("validation" in section) == validation
