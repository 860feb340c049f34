"""layers.png: the figures of a layer-analysis report (``analyze_layers``), one column per stage."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from memo_edge.utils.io import atomic_open

__all__ = ["plot_layers"]

_DPI = 120


def _save(fig: Figure, path: Path) -> None:
    # Same as memo_edge.train.plots: Agg canvas directly (no pyplot), written atomically.
    FigureCanvasAgg(fig)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=_DPI)


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def plot_layers(report: dict[str, Any], path: Path) -> None:
    """One column per stage: CKA per task transition (top row) and relative weight movement (bottom row);
    the dashed line is the first-to-last-task figure."""
    stages = report["stages"]
    labels = [f"{t['from_task']}\u2192{t['to_task']}" for t in report["transitions"]]
    x = np.arange(len(labels))
    top = max([_nan(v) for s in stages for v in s["movement"] + [s["first_last"]["movement"]]
               if v is not None] + [0.0])
    fig = Figure(figsize=(max(4.0, 2.6 * len(stages) + 0.6), 5.4))
    axes = fig.subplots(2, len(stages), sharex=True, squeeze=False)
    last = report["tasks"] - 1
    for col, stage in enumerate(stages):
        cka_ax, move_ax = axes[0][col], axes[1][col]
        cka_ax.plot(x, [_nan(v) for v in stage["cka"]], marker="o", color="tab:blue", label="t-1 \u2192 t")
        cka_ax.axhline(_nan(stage["first_last"]["cka"]), color="tab:blue", linestyle="--", alpha=0.6,
                       label=f"0 \u2192 {last}")
        cka_ax.set_ylim(-0.02, 1.02)
        cka_ax.set_title(f"{stage['name']} ({stage['kind']})")
        move_ax.plot(x, [_nan(v) for v in stage["movement"]], marker="s", color="tab:orange")
        move_ax.axhline(_nan(stage["first_last"]["movement"]), color="tab:orange", linestyle="--", alpha=0.6)
        move_ax.set_ylim(-0.02 * max(top, 1e-3), 1.1 * max(top, 1e-3))
        move_ax.set_xticks(x, labels)
        move_ax.set_xlabel("task transition")
        for ax in (cka_ax, move_ax):
            ax.grid(True, alpha=0.3)
        if col == 0:
            cka_ax.set_ylabel("linear CKA")
            move_ax.set_ylabel("relative weight movement")
            cka_ax.legend(fontsize=7, loc="lower left")
    title = report.get("title") or report.get("run", "")
    fig.suptitle(f"layer similarity across tasks: {title}", fontsize=10)
    fig.tight_layout()
    _save(fig, Path(path))
