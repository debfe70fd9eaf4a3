"""Figures people look at, as PNG bytes: attention grids, training curves, bar charts.

Figures are built on ``matplotlib.figure.Figure`` directly (the Agg canvas, no pyplot), so
nothing depends on a display or on pyplot's global state.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from tuwen.evaluation.attention import AttentionMaps, upsample


def png_bytes(fig: Figure, dpi: int = 100, tight: bool = True) -> bytes:
    """``tight`` crops to the drawn content (at the cost of drawing the figure twice)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    return buf.getvalue()


def image_png(image: np.ndarray, size: int | None = None) -> bytes:
    """An (H, W, 3) uint8 array as PNG, optionally scaled to ``size`` px wide."""
    pil = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if size is not None and pil.width != size:
        pil = pil.resize((size, max(1, round(pil.height * size / pil.width))),
                         Image.Resampling.NEAREST if pil.width < size else Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def _titles(result: AttentionMaps) -> list[str]:
    gates = result.gates
    if gates is None or len(gates) != len(result.tokens):
        return list(result.tokens)
    return [f"{t}\ntext gate {g:.2f}" for t, g in zip(result.tokens, gates)]


def _suptitle(result: AttentionMaps) -> str:
    title = f"{result.source} attention: {result.text}"
    if result.answer is not None:
        title += f"  ->  {result.answer}"
    if result.gates is not None and len(result.gates) == 1:
        title += f"  (text gate {float(result.gates[0]):.2f})"
    return title


def attention_grid(image: np.ndarray, result: AttentionMaps, cols: int = 6,
                   dpi: int = 100) -> bytes:
    """The image, then one overlaid heatmap per token (titled by the token), as a PNG.

    Each map is upsampled (bilinear) to the image and coloured from its own minimum (blue)
    to its own maximum (red): the colours show where a token looks most, not how sharply.
    """
    height, width = image.shape[:2]
    maps = upsample(result.maps, (height, width))  # (T, H, W)
    n = len(result.tokens) + 1
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2.0 * cols, 2.3 * rows + 0.5))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.5 / (2.3 * rows + 0.5),
                        wspace=0.05, hspace=0.3)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=9)
    for ax, title, heat in zip(axes[1:], _titles(result), maps):
        low, high = float(heat.min()), float(heat.max())
        ax.imshow(image)
        ax.imshow(heat, cmap="jet", alpha=0.5, vmin=low, vmax=max(high, low + 1e-12))
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(_suptitle(result), fontsize=10, wrap=True)
    return png_bytes(fig, dpi, tight=False)


# Which panel plots a logged key of metrics.jsonl: (pattern the whole key matches, panel
# title, y-axis label). A key goes to the first panel that matches; panels keep this order.
PANELS: tuple[tuple[str, str, str], ...] = (
    (r"loss(_.+)?", "training loss", "loss"),
    (r"lr", "learning rate", "learning rate"),
    (r"grad_norm(_.+)?", "gradient norm (total before clipping; weighted per task)", "L2 norm"),
    (r"weight_.+", "task loss weights", "weight"),
    (r"val_loss(_.+)?", "validation loss", "loss"),
    (r"val_caption_distinct_captions", "validation: distinct greedy captions", "captions"),
    (r"val_caption_.+", "validation: greedy caption diversity", "share"),
    (r"val_caption\..+", "validation: caption metrics", "score (pycocoevalcap scale)"),
    (r"val_retrieval\..+_rank", "validation: retrieval rank", "rank (1 = first)"),
    (r"val_retrieval\..+", "validation: retrieval recall", "recall %"),
    (r"val_vqa\..+", "validation: VQA accuracy", "accuracy %"),
    (r"val_.+", "validation: other metrics", "value"),
    (r"(text_)?cache_(hits|misses)", "feature cache reads (hits) and encodes (misses)",
     "entries"),
    (r".+", "other logged values", "value"),
)
# Keys of metrics.jsonl that are bookkeeping, not curves of training.
BOOKKEEPING = {"step", "epoch", "samples_per_sec", "elapsed_s"}
LOG_SCALE = {"training loss", "validation loss"}  # when every value is positive


@dataclass(frozen=True)
class Panel:
    title: str
    ylabel: str
    keys: tuple[str, ...]


def _series(records: Sequence[Mapping], key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in records
              if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


def curve_panels(records: Sequence[Mapping]) -> list[Panel]:
    """The panels of the training curves, in ``PANELS`` order, each with the logged keys it
    plots; panels with no key are left out."""
    keys = sorted({k for r in records for k, v in r.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)} - BOOKKEEPING)
    found: dict[int, list[str]] = {}
    for key in keys:
        index = next(i for i, (pattern, _, _) in enumerate(PANELS) if re.fullmatch(pattern, key))
        found.setdefault(index, []).append(key)
    return [Panel(PANELS[i][1], PANELS[i][2], tuple(found[i])) for i in sorted(found)]


def curves_figure(records: Sequence[Mapping], cols: int = 3) -> Figure:
    """One panel per kind of logged value (see ``PANELS``) against the step."""
    panels = curve_panels(records)
    cols = max(1, min(cols, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        for key in panel.keys:
            steps, values = _series(records, key)
            ax.plot(steps, values, label=key, marker="." if len(steps) < 30 else None)
        log = panel.title in LOG_SCALE and all(v > 0 for k in panel.keys
                                               for v in _series(records, k)[1])
        if log:
            ax.set_yscale("log")
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(f"{panel.ylabel} (log scale)" if log else panel.ylabel)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def training_curves(records: Sequence[Mapping]) -> bytes:
    """``curves_figure`` as PNG bytes."""
    return png_bytes(curves_figure(records))


def bar_chart(values: Mapping[str, float], title: str, xlabel: str) -> bytes:
    """Horizontal bars, one per key (e.g. VQA accuracy per question type)."""
    names = list(values)
    fig = Figure(figsize=(5.5, 0.35 * len(names) + 1.0))
    ax = fig.subplots()
    ax.barh(names, [values[n] for n in names], color="#4878a8")
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig)


def confusion_matrix(labels: Sequence[str], matrix: Sequence[Sequence[int]],
                     title: str = "zero-shot classification") -> bytes:
    """A heatmap of counts: rows the true class, columns the predicted one; each row
    normalised to shares, so a class with few images reads as plainly as one with many."""
    counts = np.asarray(matrix, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = 1.2 + 0.38 * len(labels)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    shown = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for (i, j), n in np.ndenumerate(counts):
        if n:
            ax.text(j, i, int(n), ha="center", va="center", fontsize=7,
                    color="white" if shares[i, j] > 0.5 else "black")
    fig.colorbar(shown, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    return png_bytes(fig)
