"""``report.html``: one self-contained page per evaluated split.

Everything is inline (CSS, PNGs as base64 data URIs, no script, no external URL), so the
file opens offline and can be mailed or archived as is. Each section has a stable ``id``
(see ``SECTIONS``); a section with nothing to show says why instead of disappearing.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from tuwen.errors import DataError, TuwenError
from tuwen.evaluation import analysis, plots
from tuwen.evaluation.attention import (
    attention_maps,
    display_image,
    image_pixels,
)
from tuwen.model_files import CONFIG_FILE
from tuwen.tasks.saved_model import SavedModel, load

SECTIONS = {"metrics": "Metrics and protocol", "curves": "Training curves",
            "samples": "Samples", "worst-captions": "20 worst captions by CIDEr",
            "retrieval-failures": "Retrieval failures", "vqa": "VQA by type and confusions",
            "classify": "Zero-shot classification",
            "attention": "Attention maps", "collapse": "Caption collapse"}
REPORT_FILE = "report.html"

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1em;
       color: #222; }
nav a { margin-right: 1em; }
section { margin: 2em 0; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f1f3f6; }
.num { font-variant-numeric: tabular-nums; }
img.thumb { width: 72px; height: 72px; image-rendering: pixelated; }
img.figure { max-width: 100%; }
.right { outline: 3px solid #2a9d3a; }
.note { color: #777; }
ul.refs { margin: 0; padding-left: 1.2em; }
"""


def _esc(value) -> str:
    return html.escape(str(value))


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return _esc(value if isinstance(value, str) else json.dumps(value))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``rows`` hold ready HTML; ``headers`` are plain text."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure(data: bytes, alt: str) -> str:
    return f'<img class="figure" alt="{_esc(alt)}" src="{_png_uri(data)}">'


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


class Thumbnails:
    """Each image file as a small inline PNG, made once."""

    def __init__(self, size: int = 72) -> None:
        self.size, self.cache = size, {}

    def html(self, path: str | None, right: bool = False) -> str:
        if path is not None and path not in self.cache:
            try:
                self.cache[path] = _png_uri(plots.image_png(display_image(path, self.size)))
            except DataError:
                self.cache[path] = None
        uri = self.cache.get(path)
        cls = "thumb right" if right else "thumb"
        if uri is None:
            return '<span class="note">image not found</span>'
        return f'<img class="{cls}" alt="{_esc(Path(path).name)}" src="{uri}">'


def _flatten(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def metrics_section(metrics: dict) -> str:
    skip = {"protocol", "skipped_reasons"}
    rows = [(_esc(k), f'<span class="num">{_fmt(v)}</span>')
            for k, v in _flatten({k: v for k, v in metrics.items() if k not in skip})
            if ".by_" not in k]
    protocol = [(_esc(k), _fmt(v)) for k, v in _flatten(metrics.get("protocol", {}))]
    reasons = "".join(f"<li>{_esc(r)}</li>" for r in metrics.get("skipped_reasons", []))
    return (_table(["metric", "value"], rows) + "<h3>Protocol</h3>"
            + (_table(["key", "value"], protocol) if protocol else _note("no protocol recorded"))
            + (f"<h3>Skipped</h3><ul>{reasons}</ul>" if reasons else ""))


def curves_section(run_dir: Path | None) -> str:
    log = run_dir / "metrics.jsonl" if run_dir is not None else None
    if log is None or not log.is_file():
        return _note(f"no training log ({log or 'RUN/metrics.jsonl'} not found)")
    records = analysis.read_jsonl(log, required=("step",))
    if not records:
        return _note(f"{log} is empty")
    panels = plots.curve_panels(records)
    if not panels:
        return _note(f"{log} holds no values to plot")
    alt = "training curves: " + "; ".join(p.title for p in panels)
    legend = "".join(f"<li><b>{_esc(p.title)}</b> ({_esc(p.ylabel)}): "
                     f"{_esc(', '.join(p.keys))}</li>" for p in panels)
    return (_figure(plots.training_curves(records), alt)
            + _note(f"{len(records)} logged steps from {log.name}, one panel each:")
            + f'<ul class="panels">{legend}</ul>')


def _refs(refs: Sequence[str]) -> str:
    return '<ul class="refs">' + "".join(f"<li>{_esc(r)}</li>" for r in refs) + "</ul>"


def _caption_rows(records: Sequence[dict], thumbs: Thumbnails) -> list[list[str]]:
    return [[thumbs.html(r.get("image")), _esc(r["caption"]), _refs(r.get("references", [])),
             f'<span class="num">{_fmt(r.get("cider"))}</span>'] for r in records]


def samples_section(records: Sequence[dict], thumbs: Thumbnails, n: int) -> str:
    captions = analysis.of_task(records, "caption")[:n]
    if not captions:
        return _note("captioning was not evaluated")
    return _table(["image", "generated", "references", "CIDEr"], _caption_rows(captions, thumbs))


def worst_section(records: Sequence[dict], thumbs: Thumbnails) -> str:
    worst = analysis.worst_captions(records, 20)
    if not worst:
        return _note("no per-image CIDEr in predictions.jsonl (captioning not evaluated)")
    return _table(["image", "generated", "references", "CIDEr"], _caption_rows(worst, thumbs))


def retrieval_section(records: Sequence[dict], thumbs: Thumbnails) -> str:
    if not analysis.of_task(records, "retrieval"):
        return _note("retrieval was not evaluated")
    if not any("top" in r for r in analysis.of_task(records, "retrieval")):
        return _note("predictions.jsonl has no ranked lists (written before tuwen kept them)")
    paths = {r["image_id"]: r.get("image") for r in records if r.get("image")}
    i2t = [[thumbs.html(r.get("image")), f'<span class="num">{r["i2t_rank"]}</span>',
            "<ol>" + "".join(f"<li>{'&#10003; ' if right else ''}{_esc(t)}</li>"
                             for t, right in zip(r["top"], r.get("top_right", [False] * 5)))
            + "</ol>"]
           for r in analysis.retrieval_failures(records, "i2t")]
    t2i = [[_esc(r["query"]), thumbs.html(paths.get(r["image_id"])),
            f'<span class="num">{r["t2i_rank"]}</span>',
            " ".join(thumbs.html(paths.get(i), right=i == r["image_id"]) for i in r["top"])]
           for r in analysis.retrieval_failures(records, "t2i")]
    return ("<h3>Image to text: worst-ranked images</h3>"
            + (_table(["query image", "rank of a right caption",
                       "top 5 retrieved (\u2713: a caption of this image)"], i2t)
               if i2t else _note("every image found a right caption first"))
            + "<h3>Text to image: worst-ranked captions</h3>"
            + (_table(["query", "right image", "rank", "top 5 retrieved (right one outlined)"],
                      t2i) if t2i else _note("every caption found its image first")))


def vqa_section(metrics: dict, records: Sequence[dict]) -> str:
    vqa = metrics.get("vqa")
    if not vqa:
        return _note("VQA was not evaluated")
    parts = [f"<p>Overall accuracy: <b>{_fmt(vqa['accuracy'])} %</b></p>"]
    for key, label in (("question_type", "question type"), ("answer_type", "answer type")):
        accs, counts = vqa.get(f"by_{key}", {}), analysis.type_counts(records, key)
        rows = [[_esc(t), f'<span class="num">{_fmt(a)}</span>',
                 f'<span class="num">{counts.get(t, "")}</span>'] for t, a in accs.items()]
        parts.append(f"<h3>By {label}</h3>" + _table([label, "accuracy %", "questions"], rows))
        if accs:
            parts.append(_figure(plots.bar_chart(accs, f"VQA accuracy by {label}", "accuracy %"),
                                 f"accuracy by {label}"))
    confused = analysis.confused_answers(records)
    rows = [[_esc(gt), _esc(ans), f'<span class="num">{c}</span>'] for gt, ans, c in confused]
    parts.append("<h3>Most confused answers</h3>"
                 + (_table(["ground truth", "predicted", "count"], rows) if rows
                    else _note("no wrong answers")))
    return "".join(parts)


def classify_section(metrics: dict) -> str:
    found = metrics.get("classify")
    if not found:
        return _note("no class-labelled images were evaluated (an imagefolder source)")
    protocol = metrics.get("protocol", {}).get("classify", {})
    parts = [f"<p>Top-1 <b>{_fmt(found['top1'])} %</b>, top-5 {_fmt(found['top5'])} % over "
             f"{found['n_classes']} classes (chance {_fmt(protocol.get('chance_top1'))} %); "
             f"templates: {_esc(', '.join(protocol.get('templates', [])))}</p>"]
    rows = [[_esc(name), f'<span class="num">{_fmt(acc)}</span>']
            for name, acc in sorted(found["per_class"].items(), key=lambda kv: kv[1])]
    parts.append("<h3>By class</h3>" + _table(["class", "top-1 %"], rows))
    confusion = found["confusion"]
    parts.append(_figure(plots.confusion_matrix(confusion["labels"], confusion["matrix"]),
                         "confusion matrix"))
    return "".join(parts)


def _safe_name(value) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(value))


def attention_figures(loaded: SavedModel, records: Sequence[dict], out_dir: Path, n: int,
                      show: bool = False) -> list[tuple[Path, str]]:
    """Decoder maps of the first ``n`` generated captions, fusion maps of the first ``n``
    questions, written to ``out_dir/*.png``; returns (file, description) pairs."""
    with_image = [r for r in records if r.get("image")]
    jobs = [(r, {"text": r["caption"]}, f"caption_{_safe_name(r['image_id'])}")
            for r in analysis.of_task(with_image, "caption")[:n]]
    jobs += [(r, {"question": r["question"], "source": "fusion"},
              f"question_{_safe_name(r['question_id'])}")
             for r in analysis.of_task(with_image, "vqa")[:n]]
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    written = []
    for record, request, name in tqdm(jobs, desc="attention maps", disable=not show, leave=False):
        try:
            result = attention_maps(loaded, image_pixels(loaded, record["image"]), **request)
        except TuwenError as err:  # an unreadable image, an empty caption
            written.append((None, f"{name}: {err}"))
            continue
        path = out_dir / f"{name}.png"
        image = display_image(record["image"], 128)
        path.write_bytes(plots.attention_grid(image, result, dpi=72))
        written.append((path, f"{result.source} attention: {result.text}"))
    return written


def attention_section(eval_dir: Path, run_dir: Path | None, records: Sequence[dict],
                      n: int, show: bool = False) -> str:
    model_dir = run_dir / "model" if run_dir is not None else None
    if model_dir is None or not (model_dir / CONFIG_FILE).is_file():
        return _note(f"no saved model ({model_dir or 'RUN/model'}) to draw attention maps from")
    loaded = load(model_dir)
    figures = attention_figures(loaded, records, eval_dir / "attention", n, show)
    if not figures:
        return _note("no captions or questions with an image path to draw attention maps for")
    return "".join(_figure(path.read_bytes(), text) + _note(f"{path.name}: {text}")
                   if path is not None else _note(text) for path, text in figures)


def collapse_section(records: Sequence[dict], run_dir: Path | None = None) -> str:
    captions = [r["caption"] for r in analysis.of_task(records, "caption")]
    if not captions:
        return _note("captioning was not evaluated")
    stats = analysis.collapse_stats(captions)
    verdict = analysis.collapse_note(records)
    head = _note(f"warning: {verdict}") if verdict else ""
    checks = analysis.training_checks(run_dir) if run_dir is not None else []
    if checks:
        head += "<h3>Checks during training</h3>" + _table(
            ["step", "distinct", "most common", "collapsed", "first caption"],
            [[str(c["step"]), f"{c['check_distinct_share']:.0%}",
              f"{c['check_most_common_share']:.0%}",
              "yes" if c.get("check_collapsed") else "no", _esc(str(c.get("check_example", "")))]
             for c in checks])
    rows = [[_esc(k), f'<span class="num">{_fmt(stats[k])}</span>']
            for k in ("n_captions", "distinct_captions", "identical_share", "most_common_share",
                      "distinct_1", "distinct_2", "vocabulary")]
    common = [[_esc(c), f'<span class="num">{n}</span>'] for c, n in stats["most_common"]]
    return (head + _table(["statistic", "value"], rows) + "<h3>Most frequent captions</h3>"
            + _table(["caption", "images"], common))


def _page(title: str, sections: dict[str, str]) -> str:
    nav = "".join(f'<a href="#{sid}">{_esc(SECTIONS[sid])}</a>' for sid in sections)
    body = "".join(f'<section id="{sid}"><h2>{_esc(SECTIONS[sid])}</h2>{content}</section>'
                   for sid, content in sections.items())
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{_esc(title)}</h1><nav>{nav}</nav>{body}</body></html>")


def write_report(eval_dir: str | Path, run_dir: str | Path | None = None, *,
                 n_samples: int = 8, n_attention: int = 2, show_progress: bool = False) -> Path:
    """Write ``eval_dir/report.html`` from ``metrics.json`` and ``predictions.jsonl`` (and
    ``RUN/metrics.jsonl`` and ``RUN/model`` for curves and attention maps; ``run_dir``
    defaults to two folders above ``eval_dir``, as in RUN/eval/<split>)."""
    eval_dir = Path(eval_dir)
    run_dir = Path(run_dir) if run_dir is not None else eval_dir.parent.parent
    metrics_path, predictions_path = eval_dir / "metrics.json", eval_dir / "predictions.jsonl"
    if not metrics_path.is_file():
        raise TuwenError(f"{metrics_path}: not found; run `tuwen eval` first")
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(metrics_path, f"not valid JSON ({err.msg})") from None
    records = (analysis.read_jsonl(predictions_path, required=("task",))
               if predictions_path.is_file() else [])
    thumbs = Thumbnails()
    sections = {
        "metrics": metrics_section(metrics), "curves": curves_section(run_dir),
        "samples": samples_section(records, thumbs, n_samples),
        "worst-captions": worst_section(records, thumbs),
        "retrieval-failures": retrieval_section(records, thumbs),
        "vqa": vqa_section(metrics, records),
        "classify": classify_section(metrics),
        "attention": attention_section(eval_dir, run_dir, records, n_attention, show_progress),
        "collapse": collapse_section(records, run_dir)}
    title = f"tuwen evaluation: {run_dir.name}, split {metrics.get('split', eval_dir.name)}"
    out = eval_dir / REPORT_FILE
    out.write_text(_page(title, sections), encoding="utf-8")
    return out
