"""results.json, metrics.csv and the two plots of a run, rewritten (atomically) after every task."""

from __future__ import annotations

import csv
import io
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from memo_edge import __version__
from memo_edge.train.metrics import average_incremental_accuracy, forgetting
from memo_edge.train.plots import plot_accuracy, plot_accuracy_matrix
from memo_edge.utils.io import atomic_write_bytes, atomic_write_json

__all__ = ["TaskRecord", "RESULTS_SCHEMA", "summarize", "write_results", "producer_versions"]

RESULTS_SCHEMA = 1


@dataclass(frozen=True)
class TaskRecord:
    """What one finished task reports; stored in its checkpoint so a resumed run keeps it."""

    task: int
    classes: tuple[int, int]  # [first, end) new labels of the task
    metrics: dict[str, Any]  # TaskMetrics.to_json()
    exemplars: int
    per_class: int
    model_bytes: int
    exemplar_bytes: int
    wall_time_s: float
    train_images_per_s: float
    final_loss: float
    align_gamma: float
    world_size: int = 1  # processes that trained the task (a resumed run may use another number)
    class_bytes: int | None = None  # stored bytes per class the memory rule allowed (None: runs before codecs)
    codec: str = "raw"  # how the exemplars are stored; exemplar_bytes counts them so
    codec_seconds: float = 0.0  # encoding and decoding the task's images under the codec
    train_seconds: float = 0.0  # the training epochs alone (0.0: runs before it was recorded)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["classes"] = list(self.classes)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskRecord:
        return cls(**{**data, "classes": tuple(data["classes"])})


def producer_versions() -> dict[str, str]:
    import numpy
    import torch
    import torchvision

    return {
        "memo_edge": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def summarize(records: Sequence[TaskRecord]) -> dict[str, Any]:
    top1 = [r.metrics["top1"] for r in records]
    nme = [r.metrics["nme_top1"] for r in records]
    matrix = [r.metrics["groups"] for r in records]
    return {
        "average_incremental_accuracy": average_incremental_accuracy(top1),
        "last_accuracy": top1[-1],
        "nme_average_incremental_accuracy": average_incremental_accuracy(nme),
        "nme_last_accuracy": nme[-1],
        "forgetting": forgetting(matrix),
        "accuracy_curve": top1,
        "nme_curve": nme,
        "accuracy_matrix": matrix,
    }


_CSV_FIELDS = ["task", "seen_classes", "top1", "top5", "nme_top1", "nme_top5", "old", "new", "exemplars",
               "per_class", "model_bytes", "exemplar_bytes", "wall_time_s", "train_images_per_s"]


def _csv_text(records: Sequence[TaskRecord]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({**r.metrics, **r.to_json()})
    return buf.getvalue()


def write_results(run_dir: Path, header: dict[str, Any], records: Sequence[TaskRecord], *, complete: bool) -> dict[str, Any]:
    """Write results.json (``header`` + per-task records + summary), metrics.csv and the plots."""
    summary = summarize(records)
    results = {
        "schema_version": RESULTS_SCHEMA,
        **header,
        "complete": complete,
        "tasks": [r.to_json() for r in records],
        "summary": summary,
    }
    atomic_write_json(run_dir / "results.json", results)
    atomic_write_bytes(run_dir / "metrics.csv", _csv_text(records).encode())
    seen = [r.metrics["seen_classes"] for r in records]
    plot_accuracy({"CNN": summary["accuracy_curve"], "NME": summary["nme_curve"]}, seen, run_dir / "accuracy.png",
                  title=header.get("title", ""))
    plot_accuracy_matrix(summary["accuracy_matrix"], run_dir / "accuracy_matrix.png")
    return results
