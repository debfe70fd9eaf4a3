"""Figures people look at, as PNG bytes: attention grids, training curves, bar charts.

Figures are built on ``matplotlib.figure.Figure`` directly (the Agg canvas, no pyplot), so
nothing depends on a display or on pyplot's global state.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from tuwen.evaluation.attention import AttentionMaps, upsample

# Keys of metrics.jsonl that are bookkeeping, not curves of the model's quality.
BOOKKEEPING = {"step", "epoch", "lr", "samples_per_sec", "elapsed_s", "grad_norm"}


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


def _series(records: Sequence[Mapping], key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in records
              if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


def curve_keys(records: Sequence[Mapping]) -> dict[str, list[str]]:
    """Which logged keys go into which panel: losses, learning rate, everything else."""
    keys = sorted({k for r in records for k, v in r.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)})
    losses = [k for k in keys if k == "loss" or k.startswith("loss_")]
    other = [k for k in keys if k not in BOOKKEEPING and k not in losses]
    return {"loss": losses, "learning rate": ["lr"] if "lr" in keys else [],
            "validation": other}


def training_curves(records: Sequence[Mapping]) -> bytes:
    """Loss per task, learning rate and any validation metrics against the step."""
    panels = {name: keys for name, keys in curve_keys(records).items() if keys}
    fig = Figure(figsize=(4.2 * max(len(panels), 1), 3.2))
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False).ravel()
    for ax, (name, keys) in zip(axes, panels.items()):
        for key in keys:
            steps, values = _series(records, key)
            ax.plot(steps, values, label=key, marker="." if len(steps) < 30 else None)
        if name == "loss" and all(v > 0 for k in keys for v in _series(records, k)[1]):
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig)


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
