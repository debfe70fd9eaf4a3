"""The model card: ``RUN/model/README.md`` in the Hugging Face model-card form.

The YAML front matter holds what the Hub reads (``library_name: tuwen``, tags, datasets,
``model-index`` with each metric and its protocol) and, under ``tuwen:``, what reproduces the
run: the resolved config, the tuwen version and git commit (with a dirty flag), a fingerprint
of each data source (its annotation files and its image list), the hardware, the steps and
wall time, and the metrics of each evaluated split. Training writes the card when it saves
the final model (``write_training_card``, called by ``apps.training.record_training``);
``tuwen eval`` adds its split's metrics (``add_eval_results``); ``tuwen reproduce``
(``apps.reproduce``) reads it.
The body below the front matter is written from the front matter, for people.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from tuwen import __version__, fsio
from tuwen.config import Config, DataConfig
from tuwen.data.sources import read_source
from tuwen.errors import TuwenError, TuwenWarning
from tuwen.model_files import CARD_FILE

FENCE = "---"
METRIC_SECTIONS = ("caption", "retrieval", "vqa", "chat")
# model-index task of each metric section (Hugging Face task ids where one fits)
TASKS = {"caption": ("image-to-text", "Image captioning"),
         "retrieval": ("image-text-retrieval", "Image-text retrieval"),
         "vqa": ("visual-question-answering", "Visual question answering"),
         "chat": ("image-text-to-text", "Conversations (the last reply of each)")}
METRIC_NAMES = {"bleu_1": "BLEU-1", "bleu_2": "BLEU-2", "bleu_3": "BLEU-3", "bleu_4": "BLEU-4",
                "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider": "CIDEr",
                "i2t_r1": "image->text R@1 %", "i2t_r5": "image->text R@5 %",
                "i2t_r10": "image->text R@10 %", "t2i_r1": "text->image R@1 %",
                "t2i_r5": "text->image R@5 %", "t2i_r10": "text->image R@10 %",
                "accuracy": "VQA accuracy %", "exact_match": "exact match %"}


# ---------------------------------------------------------------- what the card records

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _source_files(source, root: Path, names: list[str]) -> list[Path]:
    """The files a source's settings name (annotation files, image maps, data files), with
    ``{split}`` replaced by each split name; folders (saved HF datasets) by their files."""
    found: set[Path] = set()
    for text in _strings(source.model_dump(exclude={"name", "format"})):
        for name in names:
            path = root / text.replace("{split}", name)
            if path.is_file():
                found.add(path)
            elif path.is_dir() and text not in ("", "."):
                found.update(p for p in path.rglob("*") if p.is_file())
    return sorted(found)


def source_fingerprints(data: DataConfig, splits: list[str]) -> list[dict]:
    """Per source: the SHA-256 of each of its files, and of its image list (every image its
    records name in ``splits``: relative path and size)."""
    root = Path(data.root)
    cache = root / (data.cache_dir or ".cache")
    out = []
    for source in data.sources:
        names = sorted({n for split in splits for n in source.split_names(split)})
        files = _source_files(source, root, names)
        images: set[Path] = set()
        for split in splits:
            read = read_source(source, root, split, cache, stream=True)
            images.update(item.image_path for item in read.labels.captions)
            images.update(item.image_path for item in read.labels.questions)
            images.update(item.image_path for item in read.labels.conversations
                          if item.image_path is not None)
            if read.stream is not None:
                files.extend(read.stream.shards)
        listing = "".join(f"{_relative(p, root)}\t{p.stat().st_size if p.is_file() else -1}\n"
                          for p in sorted(images))
        out.append({"name": source.name, "format": source.format,
                    "files": {_relative(p, root): _sha256(p) for p in sorted(set(files))},
                    "images": {"count": len(images),
                               "sha256": hashlib.sha256(listing.encode()).hexdigest()[:16]}})
    return out


def run_splits(config: Config) -> list[str]:
    return list(dict.fromkeys([config.data.train_split, config.data.val_split,
                               *config.eval.splits]))


def code_version() -> dict:
    """tuwen's version, and the git commit of its source tree with a dirty flag (None
    outside a git checkout)."""
    where = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(where), *args], capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"version": __version__, "commit": commit,
            "dirty": None if status is None else bool(status)}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict:
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"cpu": _cpu_name(), "cpu_count": os.cpu_count(), "gpus": gpus,
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


# ---------------------------------------------------------------- reading and writing

def read_card(model_dir: str | Path) -> dict | None:
    """The card's front matter, or None when the folder has no card."""
    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        return None
    text = path.read_text()
    parts = text.split(f"\n{FENCE}\n", 1)
    if not text.startswith(FENCE + "\n") or len(parts) != 2:
        raise TuwenError(f"{path}: no YAML front matter (a model card starts with '---')")
    try:
        meta = yaml.safe_load(parts[0][len(FENCE) + 1:])
    except yaml.YAMLError as err:
        raise TuwenError(f"{path}: unreadable front matter ({err})") from None
    if not isinstance(meta, dict):
        raise TuwenError(f"{path}: the front matter is not a mapping")
    return meta


def write_card(model_dir: str | Path, meta: dict) -> Path:
    path = Path(model_dir) / CARD_FILE
    meta = json.loads(json.dumps(meta, default=str))  # plain types (torch's version is not)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100)
    fsio.write_text(path, f"{FENCE}\n{front}{FENCE}\n\n{card_body(meta)}")
    return path


def write_training_card(config: Config, model_dir: str | Path, *, steps: int,
                        elapsed_s: float, stopped_by: str) -> Path | None:
    """The card of a freshly trained model (no metrics yet), written by the process that
    saved the model (the first under a launcher; None on the others)."""
    if os.environ.get("RANK", "0") != "0":
        return None
    model_dir = Path(model_dir)
    tuwen = {**code_version(), "config": config.model_dump(mode="json"),
             "data_root": str(Path(config.data.root).resolve()),
             "data": _fingerprints_or_none(config),
             "hardware": hardware(),
             "training": {"steps": steps, "wall_time_s": round(elapsed_s, 1),
                          "stopped_by": stopped_by,
                          "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
             "metrics": {}}
    meta = {"library_name": "tuwen", "tags": _tags(config),
            "datasets": [s.name for s in config.data.sources],
            "model-index": [{"name": model_dir.resolve().parent.name, "results": []}],
            "tuwen": tuwen}
    return write_card(model_dir, meta)


def _fingerprints_or_none(config: Config) -> list[dict] | None:
    # the model is saved already: a data folder gone since the start costs the card its
    # fingerprints (and tuwen reproduce its check), not the run
    try:
        return source_fingerprints(config.data, run_splits(config))
    except (TuwenError, OSError) as err:
        warnings.warn(f"model card: the data was not fingerprinted ({err})", TuwenWarning,
                      stacklevel=2)
        return None


def _tags(config: Config) -> list[str]:
    model = config.model
    return ["tuwen", "image-text", "image-to-text", "visual-question-answering",
            "image-text-retrieval", f"fusion-{model.fusion.type}",
            f"image-encoder-{model.image_encoder.type}", f"decoder-{model.decoder.type}"]


def flat_metrics(metrics: dict) -> dict[str, float]:
    """``{"caption.cider": 0.4, "vqa.by_answer_type.colour": 20.0, ...}``: the numbers of
    the caption, retrieval, VQA and chat sections of a metrics.json."""
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[prefix] = float(value)

    for section in METRIC_SECTIONS:
        if section in metrics:
            walk(section, metrics[section])
    return out


def _results(split: str, metrics: dict, datasets: list[str]) -> list[dict]:
    protocol = metrics.get("protocol", {})
    out = []
    for section in METRIC_SECTIONS:
        values = {k: v for k, v in metrics.get(section, {}).items() if k in METRIC_NAMES}
        if not values:
            continue
        task_type, task_name = TASKS[section]
        out.append({
            "task": {"type": task_type, "name": task_name},
            # the protocol once per task: how the numbers below were computed
            "dataset": {"name": ", ".join(datasets), "type": "tuwen-data", "split": split,
                        "args": {"protocol": protocol.get(section, {})}},
            "metrics": [{"type": key, "value": value, "name": METRIC_NAMES[key]}
                        for key, value in values.items()]})
    return out


def add_eval_results(model_dir: str | Path, split: str, metrics: dict) -> Path | None:
    """Record a split's metrics on the card (replacing that split's earlier ones); a model
    folder without a card (trained before cards) is left as it is."""
    meta = read_card(model_dir)
    if meta is None:
        return None
    meta.setdefault("tuwen", {}).setdefault("metrics", {})[split] = flat_metrics(metrics)
    index = meta.setdefault("model-index", [{"name": Path(model_dir).resolve().parent.name}])
    kept = [r for r in index[0].get("results", []) if r["dataset"].get("split") != split]
    index[0]["results"] = kept + _results(split, metrics, meta.get("datasets", []))
    return write_card(model_dir, meta)


# ---------------------------------------------------------------- the body, for people

def card_body(meta: dict) -> str:
    tuwen = meta.get("tuwen", {})
    train, hw = tuwen.get("training", {}), tuwen.get("hardware", {})
    commit = tuwen.get("commit") or "unknown"
    dirty = " (uncommitted changes)" if tuwen.get("dirty") else ""
    lines = [f"# {meta['model-index'][0]['name']}", "",
             "An image-text model trained with tuwen: captioning, image-text retrieval "
             "(ITC/ITM) and VQA in one model.", "",
             f"- tuwen {tuwen.get('version')}, commit `{commit}`{dirty}",
             f"- {train.get('steps')} steps in {train.get('wall_time_s')} s "
             f"(stopped by {train.get('stopped_by')}) on {hw.get('cpu')}"
             + (f", {', '.join(hw['gpus'])}" if hw.get("gpus") else ""),
             "", "## Data", "", "| source | format | images | files |", "|---|---|---|---|"]
    for source in tuwen.get("data") or []:
        lines.append(f"| {source['name']} | {source['format']} | {source['images']['count']} "
                     f"| {len(source['files'])} |")
    lines += ["", "## Results", ""]
    metrics = tuwen.get("metrics", {})
    if not metrics:
        lines.append("Not evaluated yet: `tuwen eval RUN --split test` adds the metrics here.")
    for split, values in metrics.items():
        lines += [f"**{split}**", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value:.4g} |" for key, value in values.items()
                  if key.count(".") == 1]
        lines.append("")
    lines += ["", "## Reproduce", "", "```bash", "tuwen reproduce MODEL_DIR --out NEW_RUN",
              "```", "", "retrains from the config in this card's front matter (after checking "
              "each data source's fingerprint), evaluates, and prints each metric then and now.",
              ""]
    return "\n".join(lines)


def config_of(meta: dict, path: Path) -> dict:
    """The card's config as a raw mapping (validated by the caller)."""
    config = meta.get("tuwen", {}).get("config")
    if not isinstance(config, dict):
        raise TuwenError(f"{path}: the model card holds no tuwen.config; it cannot be "
                         "reproduced")
    return config

