"""The dataset doctor's output: a table for the terminal, ``check.json``, and a picture of the
token-length histograms against ``data.max_text_length``."""

from __future__ import annotations

import json
from pathlib import Path

from tuwen.errors import TuwenError

COLUMNS = (("images", "images"), ("captions", "captions"), ("questions", "questions"),
           ("missing", "missing"), ("unreadable", "unreadable"), ("tiny", "tiny"),
           ("empty_captions", "empty cap"), ("duplicate_captions", "dup cap"),
           ("caption_truncated", "cut"), ("caption_truncated_away", "cut away"))


def format_table(report: dict) -> str:
    head = f"{'source/split':<24}" + "".join(f"{label:>11}" for _, label in COLUMNS) \
        + f"{'answers %':>11}"
    lines = [head, "-" * len(head)]
    for part in report["parts"]:
        name = f"{part['source']}/{part['split']}"
        if part["error"] is not None:
            lines.append(f"{name:<24}  unparseable (see errors)")
            continue
        cells = "".join(f"{part[key]:>11}" for key, _ in COLUMNS)
        cover = "-" if part["answer_coverage"] is None else f"{part['answer_coverage']:.1f}"
        lines.append(f"{name:<24}{cells}{cover:>11}")
    lines += [f"ERROR   {e}" for e in report["errors"]]
    lines += [f"warning {w}" for w in report["warnings"]]
    verdict = "OK" if report["ok"] else f"FAILED: {len(report['errors'])} error(s)"
    lines.append(f"data check {verdict}, {len(report['warnings'])} warning(s)")
    return "\n".join(lines)


def check_path(out: str | Path) -> Path:
    """``--out``: a folder (``check.json`` goes in it) or a ``.json`` file."""
    out = Path(out)
    return out if out.suffix == ".json" else out / "check.json"


def write_report(report: dict, out: str | Path) -> Path:
    path = check_path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str))
        plot_lengths(report, path.with_name(path.stem + "_lengths.png"))
    except OSError as err:  # e.g. a read-only data folder: say so, and where else to write
        raise TuwenError(f"cannot write {path}: {err.strerror or err} (choose --out)") from None
    return path


def plot_lengths(report: dict, path: Path) -> Path | None:
    """Caption and question token-length histograms per source/split, the limit marked."""
    rows = [(p, kind) for p in report["parts"] for kind in ("caption", "question")
            if p.get(f"{kind}_tokens")]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(7, 1.8 * len(rows) + 0.6), squeeze=False)
    for ax, (part, kind) in zip(axes[:, 0], rows):
        hist = part[f"{kind}_tokens"]["histogram"]
        colours = ["tab:blue"] * (len(hist) - 1) + ["tab:red"]  # the last bin: at the limit
        ax.bar(range(len(hist)), list(hist.values()), color=colours)
        ax.set_xticks(range(len(hist)), list(hist.keys()), fontsize=7)
        ax.set_title(f"{part['source']}/{part['split']}: {kind} tokens "
                     f"(data.max_text_length {report['max_text_length']}, red: at the limit)",
                     fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
