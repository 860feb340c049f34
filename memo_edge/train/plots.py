"""Accuracy plots, written atomically as PNG.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas directly, so nothing
here touches pyplot or the process-wide backend that callers may have chosen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from memo_edge.utils.io import atomic_open

__all__ = ["plot_accuracy", "plot_accuracy_matrix"]

_DPI = 120


def _save(fig: Figure, path: Path) -> None:
    # A crash mid-write must not leave a truncated PNG behind (utils.io.atomic_open).
    FigureCanvasAgg(fig)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=_DPI)


def plot_accuracy(
    curves: Mapping[str, Sequence[float]],
    seen_classes: Sequence[int],
    path: Path,
    *,
    title: str = "",
) -> None:
    """Top-1 accuracy (%) after each task against the number of classes seen, one line per curve."""
    x = [int(c) for c in seen_classes]
    if not x:
        raise ValueError("seen_classes is empty; need one value per finished task")
    if not curves:
        raise ValueError("curves is empty; give at least one, e.g. {'CNN': [...], 'NME': [...]}")
    for name, ys in curves.items():
        if len(ys) != len(x):
            raise ValueError(f"curve {name!r} has {len(ys)} points but seen_classes has {len(x)}")
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    for name, ys in curves.items():
        ax.plot(x, [float(v) for v in ys], marker="o", label=name)
    ax.set_xlabel("number of classes seen")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks(x)
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    _save(fig, Path(path))


def _lower_triangle(matrix: Sequence[Sequence[float]]) -> np.ndarray:
    """``T x T`` array with matrix[t][g] for g <= t and nan above the diagonal (rows may be ragged)."""
    n = len(matrix)
    out = np.full((n, n), np.nan)
    for t, row in enumerate(matrix):
        if len(row) < t + 1:
            raise ValueError(f"row {t} of the accuracy matrix needs at least {t + 1} values, got {len(row)}")
        out[t, : t + 1] = [float(v) for v in row[: t + 1]]
    return out


def plot_accuracy_matrix(matrix: Sequence[Sequence[float]], path: Path) -> None:
    """Heatmap of accuracy (%) on task group g (columns) after task t (rows), values annotated;
    cells above the diagonal (groups not yet learnt) are left blank."""
    if len(matrix) == 0:
        raise ValueError("the accuracy matrix is empty; need one row per finished task")
    data = _lower_triangle(matrix)
    n = data.shape[0]
    side = max(3.0, 0.55 * n + 1.8)
    fig = Figure(figsize=(side + 0.8, side))
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="white")  # a copy: the registered map is untouched
    image = ax.imshow(np.ma.masked_invalid(data), vmin=0, vmax=100, cmap=cmap)
    fontsize = 8 if n <= 12 else 6
    for t in range(n):
        for g in range(t + 1):
            v = data[t, g]
            if math.isnan(v):
                continue  # a group without test samples: nothing to show
            ax.text(g, t, f"{v:.1f}", ha="center", va="center", fontsize=fontsize,
                    color="black" if v > 60 else "white")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("task group g")
    ax.set_ylabel("after task t")
    ax.set_title("accuracy per task group (%)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    _save(fig, Path(path))
