"""``tuwen demo``: shapes data -> joint training -> evaluation on test and test_novel -> table."""

from __future__ import annotations

import json
from pathlib import Path

from tuwen.apps.training import record_training
from tuwen.config import Config, packaged_config
from tuwen.data.shapes import generate_shapes, shapes_manifest
from tuwen.evaluation.evaluate import evaluate_run
from tuwen.training.loop import train

DEMO_SPLITS = ("test", "test_novel")


def demo_config_path(path: str | Path | None = None) -> Path:
    """The config ``tuwen demo`` trains: ``path`` when given, else the demo config shipped
    inside the package (``tuwen/configs/shapes.yaml``, the same file as the repository's
    ``configs/shapes.yaml``), so an installed tuwen trains the documented model anywhere."""
    return Path(path) if path is not None else packaged_config("shapes")


def ensure_shapes(data_dir: Path, seed: int, counts: dict[str, int] | None = None,
                  image_size: int = 64) -> None:
    """Generate the shapes data unless ``data_dir`` already holds exactly this request."""
    params = {"seed": seed, "image_size": image_size, **(counts or {})}
    manifest = data_dir / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()) == shapes_manifest(**params):
        print(f"using existing shapes data in {data_dir}")
        return
    print(f"generating shapes data in {data_dir}")
    generate_shapes(data_dir, **params)


def run_demo(out: Path, config: Config, *, data_seed: int = 0,
             counts: dict[str, int] | None = None, show_progress: bool = True) -> dict:
    ensure_shapes(Path(config.data.root), data_seed, counts, config.data.image_size)
    result = train(config, out, show_progress=show_progress)
    record_training(config, result)
    print(f"trained {result.steps} steps in {result.elapsed_s / 60:.1f} min "
          f"({result.samples / max(result.elapsed_s, 1e-9):.0f} samples/s, "
          f"stopped by {result.stopped_by})")
    metrics = {split: evaluate_run(out, split, show_progress=show_progress)
               for split in DEMO_SPLITS}
    print(results_table(metrics))
    print(f"\nrun directory: {out}\n  model: {out / 'model'}\n  metrics: "
          + ", ".join(str(out / 'eval' / s / 'metrics.json') for s in DEMO_SPLITS)
          + "\n  reports: " + ", ".join(str(out / 'eval' / s / 'report.html') for s in DEMO_SPLITS))
    return metrics


ROWS = [("caption", "bleu_4", "BLEU-4"), ("caption", "meteor", "METEOR"),
        ("caption", "rouge_l", "ROUGE-L"), ("caption", "cider", "CIDEr"),
        ("retrieval", "i2t_r1", "image->text R@1 %"), ("retrieval", "i2t_r5", "image->text R@5 %"),
        ("retrieval", "t2i_r1", "text->image R@1 %"), ("retrieval", "t2i_r5", "text->image R@5 %"),
        ("vqa", "accuracy", "VQA accuracy %")]


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def results_table(metrics: dict[str, dict]) -> str:
    splits = list(metrics)
    lines = [f"{'metric':<32}" + "".join(f"{s:>12}" for s in splits)]
    for section, key, label in ROWS:
        lines.append(f"{label:<32}" + "".join(
            f"{_fmt(metrics[s].get(section, {}).get(key)):>12}" for s in splits))
    qtypes = sorted({t for s in splits
                     for t in metrics[s].get("vqa", {}).get("by_question_type", {})})
    for t in qtypes:
        lines.append(f"{'  VQA ' + t + ' %':<32}" + "".join(
            f"{_fmt(metrics[s]['vqa']['by_question_type'].get(t)):>12}" for s in splits))
    for key, label in (("top1", "zero-shot top-1 %"), ("top5", "zero-shot top-5 %")):
        if any("classify" in metrics[s] for s in splits):
            lines.append(f"{label:<32}" + "".join(
                f"{_fmt(metrics[s].get('classify', {}).get(key)):>12}" for s in splits))
    if any("grounding" in metrics[s] for s in splits):  # shapes data (evaluation.grounding)
        for label, pick in (("attention on named object %", _best_layer),
                            ("  if spread evenly %", lambda g: 100 * g["uniform"])):
            lines.append(f"{label:<32}" + "".join(
                f"{_fmt(pick(g) if (g := metrics[s].get('grounding')) else None):>12}"
                for s in splits))
    return "\n".join(lines)


def _best_layer(grounding: dict) -> float:
    """The fusion layer whose attention is most on the named objects, in percent."""
    return 100 * max(grounding["per_layer"])

