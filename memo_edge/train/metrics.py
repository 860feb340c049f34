"""Evaluation metrics for class-incremental learning: pure numpy, accuracies in percent.

What is measured follows memo-reference.md, "Protocol": after each task, top-1/top-5 of the classifier
(CNN) and of NME, old vs new class accuracy, accuracy per task's class group (using the real task
boundaries), average incremental accuracy and forgetting from the per-task accuracy matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from memo_edge.memory.herding import l2_normalize

__all__ = [
    "topk_accuracy",
    "group_accuracies",
    "old_new_accuracy",
    "nme_scores",
    "average_incremental_accuracy",
    "forgetting",
    "TaskMetrics",
    "task_metrics",
]


def _labels(labels: Any) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def _percent(correct: np.ndarray) -> float:
    """Mean of a boolean array in percent; nan for an empty one (no samples, nothing to measure)."""
    if correct.size == 0:
        return math.nan
    return float(100.0 * correct.mean())


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Percent of rows whose label is among the ``k`` highest scores (``k`` clipped to the class count)."""
    s = np.asarray(scores)
    y = _labels(labels)
    if s.ndim != 2 or s.shape[0] != y.shape[0]:
        raise ValueError(f"scores must be [N, C] with N = len(labels) = {y.shape[0]}, got {s.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, s.shape[1])
    # Stable sort of the negated scores: ties go to the lower class index.
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return _percent((top == y[:, None]).any(axis=1))


def _check_boundaries(boundaries: Sequence[int]) -> np.ndarray:
    b = np.asarray(list(boundaries), dtype=np.int64)
    if b.ndim != 1 or b.size == 0 or b[0] <= 0 or np.any(np.diff(b) <= 0):
        raise ValueError(
            f"boundaries must be strictly increasing positive class ends, e.g. [10, 20, 25]; got {list(boundaries)}"
        )
    return b


def group_accuracies(pred: np.ndarray, labels: np.ndarray, boundaries: Sequence[int]) -> list[float]:
    """Accuracy per task's class group; group g holds labels in [boundaries[g-1], boundaries[g]).

    Uses the real task boundaries (reference "Protocol": a known bug elsewhere buckets by fixed blocks
    of 10 classes, which is wrong for B50 or Inc5/Inc25 splits). A group without samples gives nan.
    """
    p, y = _labels(pred), _labels(labels)
    if p.shape != y.shape:
        raise ValueError(f"pred and labels differ in length: {p.shape[0]} vs {y.shape[0]}")
    b = _check_boundaries(boundaries)
    if y.size and (y.min() < 0 or y.max() >= b[-1]):
        raise ValueError(f"labels must lie in [0, {int(b[-1])}) for boundaries {b.tolist()}")
    group = np.searchsorted(b, y, side="right")
    correct = p == y
    return [_percent(correct[group == g]) for g in range(b.size)]


def old_new_accuracy(pred: np.ndarray, labels: np.ndarray, known: int) -> tuple[float | None, float]:
    """(accuracy on old classes ``labels < known``, accuracy on new ones); old is None when known == 0."""
    p, y = _labels(pred), _labels(labels)
    if p.shape != y.shape:
        raise ValueError(f"pred and labels differ in length: {p.shape[0]} vs {y.shape[0]}")
    if known < 0:
        raise ValueError(f"known must be >= 0, got {known}")
    correct = p == y
    old = y < known
    old_acc = None if known == 0 else _percent(correct[old])
    return old_acc, _percent(correct[~old])


def nme_scores(features: np.ndarray, class_means: np.ndarray) -> np.ndarray:
    """NME scores ``[N, C]``: minus the euclidean distance of each L2-normalised feature to each
    L2-normalised class mean (reference "Exemplars": nearest normalised class mean), so argmax = nearest.
    """
    f = np.asarray(features, dtype=np.float64)
    m = np.asarray(class_means, dtype=np.float64)
    if f.ndim != 2 or m.ndim != 2 or f.shape[1] != m.shape[1]:
        raise ValueError(f"features [N, D] and class_means [C, D] must share D; got {f.shape} and {m.shape}")
    f, m = l2_normalize(f), l2_normalize(m)
    sq = (f * f).sum(1)[:, None] + (m * m).sum(1)[None, :] - 2.0 * f @ m.T
    return -np.sqrt(np.maximum(sq, 0.0))


def average_incremental_accuracy(curve: Sequence[float]) -> float:
    """Mean of the per-task top-1 curve over all tasks, task 0 included (reference "Protocol")."""
    values = [float(v) for v in curve]
    if not values:
        raise ValueError("the accuracy curve is empty; need one value per finished task")
    return float(np.mean(values))


def forgetting(matrix: Sequence[Sequence[float]]) -> float | None:
    """Final average forgetting from ``matrix[t][g]`` = accuracy on group g after task t (g <= t).

    For every group g but the last: its best accuracy before the final task (max over t in [g, T-2])
    minus its accuracy after the final task; averaged over groups. None with a single task.
    Rows may be ragged (row t holding at least t + 1 values); entries above the diagonal are ignored.
    """
    rows = [list(map(float, row)) for row in matrix]
    n = len(rows)
    if n == 0:
        raise ValueError("the accuracy matrix is empty; need one row per finished task")
    for t, row in enumerate(rows):
        if len(row) < t + 1:
            raise ValueError(f"row {t} of the accuracy matrix needs at least {t + 1} values, got {len(row)}")
    if n == 1:
        return None
    last = rows[-1]
    drops = [max(rows[t][g] for t in range(g, n - 1)) - last[g] for g in range(n - 1)]
    return float(np.mean(drops))


def _json_float(v: float | None) -> float | None:
    # JSON has no NaN: an empty group is written as null.
    return None if v is None or math.isnan(v) else float(v)


@dataclass
class TaskMetrics:
    """Everything measured after one task (accuracies in percent)."""

    task: int
    seen_classes: int
    top1: float
    top5: float
    nme_top1: float | None
    nme_top5: float | None
    old: float | None
    new: float
    groups: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (nan -> None)."""
        out = asdict(self)
        for key in ("top1", "top5", "nme_top1", "nme_top5", "old", "new"):
            out[key] = _json_float(out[key])
        out["groups"] = [_json_float(g) for g in self.groups]
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TaskMetrics:
        """Inverse of :meth:`to_json` (None in ``groups`` back to nan)."""
        data = dict(obj)
        data["groups"] = [math.nan if g is None else float(g) for g in data.get("groups", [])]
        for key in ("top1", "top5", "new"):  # always measured: null can only have been nan
            data[key] = math.nan if data.get(key) is None else float(data[key])
        return cls(**data)


def task_metrics(
    task: int,
    logits: np.ndarray,
    nme_scores: np.ndarray | None,
    labels: np.ndarray,
    boundaries: Sequence[int],
    known: int,
) -> TaskMetrics:
    """All metrics after ``task``: ``boundaries`` are the class ends up to and including this task,
    ``known`` the number of classes before it; ``nme_scores`` may be None (no exemplars, no NME).
    Old/new and group accuracies are those of the classifier (CNN)."""
    b = _check_boundaries(boundaries)
    seen = int(b[-1])
    z = np.asarray(logits)
    if z.ndim != 2 or z.shape[1] != seen:
        raise ValueError(f"logits must be [N, {seen}] (one column per seen class), got {z.shape}")
    if not 0 <= known < seen:
        raise ValueError(f"known must be in [0, {seen}), got {known}")
    pred = z.argmax(axis=1)
    old, new = old_new_accuracy(pred, labels, known)
    nme1 = nme5 = None
    if nme_scores is not None:
        nme1, nme5 = topk_accuracy(nme_scores, labels, 1), topk_accuracy(nme_scores, labels, 5)
    return TaskMetrics(
        task=int(task),
        seen_classes=seen,
        top1=topk_accuracy(z, labels, 1),
        top5=topk_accuracy(z, labels, 5),
        nme_top1=nme1,
        nme_top5=nme5,
        old=old,
        new=new,
        groups=group_accuracies(pred, labels, b.tolist()),
    )
