"""report.html for a smoke run: every section, nothing external, renders in headless Chromium."""

import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tiny import tiny_overrides
from tuwen.apps.cli import main
from tuwen.errors import DataError, TuwenError
from tuwen.evaluation import analysis
from tuwen.evaluation.report import SECTIONS, write_report

CHROMIUM = Path("/usr/bin/chromium")


class Page(HTMLParser):
    """Section ids, the tags inside each section, and every URL-bearing attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[tuple[str, dict]]] = {}
        self.current: str | None = None
        self.urls: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "section":
            self.current = attrs["id"]
            self.sections[self.current] = []
        elif self.current is not None:
            self.sections[self.current].append((tag, attrs))
        self.urls += [v for k, v in attrs.items() if k in ("src", "href", "action", "srcset")]

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def count(page: Page, section: str, tag: str) -> int:
    return sum(t == tag for t, _ in page.sections[section])


@pytest.fixture(scope="module")
def smoke_run(tiny_shapes, tmp_path_factory):
    run = tmp_path_factory.mktemp("report") / "run"
    sets = [arg for s in tiny_overrides(tiny_shapes, max_steps=4) for arg in ("--set", s)]
    assert main(["train", "configs/shapes.yaml", "--out", str(run), *sets]) == 0
    quick = ["eval.decoding=greedy", "eval.max_images=8", "eval.max_new_tokens=8"]
    assert main(["eval", str(run), "--split", "test", *(a for q in quick for a in ("--set", q))
                 ]) == 0
    return run


def predictions(run: Path) -> list[dict]:
    return analysis.read_jsonl(run / "eval/test/predictions.jsonl")


def test_eval_writes_a_report_with_every_section(smoke_run):
    page = parse(smoke_run / "eval/test/report.html")
    assert list(page.sections) == list(SECTIONS)
    assert count(page, "curves", "img") == 1
    assert count(page, "samples", "img") == 8  # the 8 evaluated test images
    assert count(page, "worst-captions", "tr") == 1 + 8  # header + all of them (< 20)
    assert count(page, "retrieval-failures", "table") >= 1
    assert count(page, "vqa", "img") == 2  # accuracy by question type and by answer type
    assert count(page, "collapse", "table") == 3  # training's checks, statistics, most frequent
    figures = sorted(p.name for p in (smoke_run / "eval/test/attention").glob("*.png"))
    assert len(figures) == 4 and sum(f.startswith("caption_") for f in figures) == 2
    assert count(page, "attention", "img") == 4


def test_report_numbers_come_from_the_evaluation(smoke_run):
    text = (smoke_run / "eval/test/report.html").read_text()
    records = predictions(smoke_run)
    metrics = json.loads((smoke_run / "eval/test/metrics.json").read_text())
    assert "caption.cider" in text and "protocol" in text.lower()
    assert metrics["protocol"]["split"] == "test"
    for qtype in metrics["vqa"]["by_question_type"]:
        assert f"<td>{qtype}</td>" in text
    worst = analysis.worst_captions(records, 20)
    assert worst[0]["cider"] == min(r["cider"] for r in analysis.of_task(records, "caption"))
    stats = analysis.collapse_stats([r["caption"] for r in analysis.of_task(records, "caption")])
    assert f"{stats['distinct_1']:.4g}" in text
    t2i = analysis.of_task(records, "retrieval", "t2i")
    assert len(t2i) == sum(len(r["references"]) for r in analysis.of_task(records, "caption"))
    for r in t2i:  # the rank agrees with where the right image sits in the top 5
        assert len(r["top"]) == 5 and r["t2i_rank"] >= 1
        assert (r["image_id"] in r["top"]) == (r["t2i_rank"] <= 5)
        if r["t2i_rank"] <= 5:
            assert r["top"].index(r["image_id"]) == r["t2i_rank"] - 1
    for r in analysis.of_task(records, "retrieval", "i2t"):
        first = r["top_right"].index(True) + 1 if any(r["top_right"]) else None
        assert first == (r["i2t_rank"] if r["i2t_rank"] <= 5 else None)
    assert all(Path(r["image"]).is_absolute() for r in records if "image" in r)
    assert "image not found" not in text


def test_report_is_self_contained(smoke_run):
    page = parse(smoke_run / "eval/test/report.html")
    assert page.urls and all(u.startswith(("data:image/png;base64,", "#")) for u in page.urls)
    assert not {"script", "link", "iframe", "object"} & set(page.tags)
    text = (smoke_run / "eval/test/report.html").read_text()
    assert "http://" not in text and "https://" not in text and "url(" not in text


def test_report_renders_in_headless_chromium(smoke_run, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium not installed (`make chromium` installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed "
                                   "(pip install -e '.[dev]')")
    from PIL import Image

    errors, requests = [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto((smoke_run / "eval/test/report.html").as_uri(), wait_until="load")
            decoded = page.evaluate("Array.from(document.images).every("
                                    "i => i.complete && i.naturalWidth > 0)")
            n_images = page.evaluate("document.images.length")
            png = page.screenshot(full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert all(u.startswith(("file://", "data:")) for u in requests), requests
    assert decoded and n_images > 20
    shot = Image.open(io.BytesIO(png)).convert("RGB")
    (tmp_path / "report.png").write_bytes(png)
    assert shot.height > 2000  # the whole page, not one screen
    assert len(shot.getcolors(maxcolors=1 << 20)) > 100  # text, tables and figures drawn


def test_report_for_a_vqa_only_evaluation_explains_the_missing_sections(smoke_run, tmp_path):
    eval_dir = tmp_path / "run/eval/val"
    eval_dir.mkdir(parents=True)
    metrics = {"split": "val", "vqa": {"accuracy": 50.0, "by_answer_type": {"number": 50.0},
                                       "by_question_type": {"count": 50.0}}}
    (eval_dir / "metrics.json").write_text(json.dumps(metrics))
    vqa = [r for r in predictions(smoke_run) if r["task"] == "vqa"][:2]
    (eval_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in vqa))
    page = parse(write_report(eval_dir))  # run dir RUN = two levels up: no log, no model
    assert list(page.sections) == list(SECTIONS)
    text = (eval_dir / "report.html").read_text()
    assert "captioning was not evaluated" in text and "retrieval was not evaluated" in text
    assert "no training log" in text and "no saved model" in text
    shutil.copytree(smoke_run / "model", tmp_path / "run/model")
    write_report(eval_dir)
    assert len(list((eval_dir / "attention").glob("question_*.png"))) == 2


def test_broken_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(TuwenError, match="metrics.json: not found"):
        write_report(tmp_path)
    (tmp_path / "metrics.json").write_text("{")
    with pytest.raises(DataError, match="metrics.json: not valid JSON"):
        write_report(tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "predictions.jsonl").write_text('{"task": "vqa"}\n[1]\n')
    with pytest.raises(DataError, match=r"predictions.jsonl, record 1: expected a JSON object"):
        write_report(tmp_path)
    (tmp_path / "predictions.jsonl").write_text('{"task": "vqa"}\n\n{"image_id": 3}\n')
    with pytest.raises(DataError, match=r"predictions.jsonl, record 2, key 'task': missing"):
        write_report(tmp_path)
    (tmp_path / "predictions.jsonl").write_text('{"task": "vqa"}\n{"task": \n')
    with pytest.raises(DataError, match=r"record 1: not valid JSON"):
        write_report(tmp_path)


def test_collapse_statistics_by_hand():
    stats = analysis.collapse_stats(["a red circle", "a red circle", "A blue square",
                                     "two shapes"])
    assert stats["distinct_captions"] == 3 and stats["vocabulary"] == 7
    assert stats["identical_share"] == 0.5 and stats["most_common_share"] == 0.5
    assert stats["distinct_1"] == 7 / 11  # a red circle a red circle a blue square two shapes
    assert stats["distinct_2"] == 5 / 7   # a-red red-circle (twice), a-blue blue-square two-shapes
    assert stats["most_common"][0] == ("a red circle", 2)
    assert analysis.collapse_stats([])["distinct_1"] == 0.0


def test_worst_captions_failures_and_confusions_by_hand():
    records = [
        {"task": "caption", "image_id": 1, "caption": "x", "cider": 0.5, "bleu_4": 0.1},
        {"task": "caption", "image_id": 2, "caption": "y", "cider": 0.0, "bleu_4": 0.2},
        {"task": "caption", "image_id": 3, "caption": "z", "cider": 0.0, "bleu_4": 0.0},
        {"task": "retrieval", "direction": "i2t", "image_id": 1, "i2t_rank": 1, "top": []},
        {"task": "retrieval", "direction": "i2t", "image_id": 2, "i2t_rank": 4, "top": []},
        {"task": "retrieval", "direction": "t2i", "query": "q", "image_id": 2, "t2i_rank": 2,
         "top": []},
        *({"task": "vqa", "gt": gt, "answer": ans, "question_type": qt, "answer_type": "other"}
          for gt, ans, qt in [("red", "blue", "colour"), ("red", "blue", "colour"),
                              ("2", "3", "count"), ("red", "red", "colour")]),
    ]
    assert [r["image_id"] for r in analysis.worst_captions(records, 2)] == [3, 2]
    assert [r["image_id"] for r in analysis.retrieval_failures(records, "i2t")] == [2]
    assert [r["query"] for r in analysis.retrieval_failures(records, "t2i")] == ["q"]
    assert analysis.confused_answers(records) == [("red", "blue", 2), ("2", "3", 1)]
    assert analysis.type_counts(records, "question_type") == {"colour": 3, "count": 1}
