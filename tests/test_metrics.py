from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from memo_edge.train.metrics import (
    TaskMetrics,
    average_incremental_accuracy,
    forgetting,
    group_accuracies,
    nme_scores,
    old_new_accuracy,
    task_metrics,
    topk_accuracy,
)
from memo_edge.train.plots import plot_accuracy, plot_accuracy_matrix

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- top-k


def test_topk_accuracy_hand_example() -> None:
    scores = np.array(
        [
            [0.1, 0.7, 0.2],  # ranking 1, 2, 0; label 1 -> top-1 hit
            [0.5, 0.3, 0.2],  # ranking 0, 1, 2; label 1 -> top-2 hit only
            [0.2, 0.3, 0.5],  # ranking 2, 1, 0; label 0 -> only top-3
            [0.6, 0.1, 0.3],  # ranking 0, 2, 1; label 0 -> top-1 hit
        ]
    )
    labels = np.array([1, 1, 0, 0])
    assert topk_accuracy(scores, labels, 1) == 50.0
    assert topk_accuracy(scores, labels, 2) == 75.0
    assert topk_accuracy(scores, labels, 3) == 100.0
    assert topk_accuracy(scores, labels, 5) == 100.0  # k clipped to C = 3
    with pytest.raises(ValueError):
        topk_accuracy(scores, labels, 0)
    with pytest.raises(ValueError):
        topk_accuracy(scores, labels[:3], 1)


# ---------------------------------------------------------------- groups, old/new


def test_group_accuracies_uneven_boundaries() -> None:
    # Groups: [0, 4), [4, 8), [8, 10).
    labels = np.array([0, 1, 3, 3, 4, 7, 8, 9, 9, 5])
    pred = np.array([0, 2, 3, 3, 4, 1, 8, 0, 0, 5])
    # group 0: labels 0,1,3,3 -> correct 0,3,3 = 3/4 = 75%
    # group 1: labels 4,7,5   -> correct 4,5     = 2/3 = 66.67%
    # group 2: labels 8,9,9   -> correct 8       = 1/3 = 33.33%
    acc = group_accuracies(pred, labels, [4, 8, 10])
    assert acc == pytest.approx([75.0, 200 / 3, 100 / 3])
    # Not fixed 10-class buckets: with boundaries [10] it is one group over everything (6/10).
    assert group_accuracies(pred, labels, [10]) == pytest.approx([60.0])


def test_group_accuracies_empty_group_is_nan_and_bad_input() -> None:
    acc = group_accuracies(np.array([0, 1]), np.array([0, 1]), [2, 5])
    assert acc[0] == 100.0 and math.isnan(acc[1])
    with pytest.raises(ValueError, match="strictly increasing"):
        group_accuracies(np.array([0]), np.array([0]), [4, 4])
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        group_accuracies(np.array([0]), np.array([10]), [4, 10])


def test_old_new_accuracy() -> None:
    labels = np.array([0, 1, 2, 3, 4, 5])
    pred = np.array([0, 0, 2, 3, 5, 5])
    # known = 3: old labels 0,1,2 -> 2/3 right; new labels 3,4,5 -> 2/3 right
    old, new = old_new_accuracy(pred, labels, 3)
    assert old == pytest.approx(200 / 3) and new == pytest.approx(200 / 3)
    old, new = old_new_accuracy(pred, labels, 2)  # old 0,1 -> 1/2; new 2..5 -> 3/4
    assert old == 50.0 and new == 75.0
    assert old_new_accuracy(pred, labels, 0) == (None, pytest.approx(400 / 6))


# ---------------------------------------------------------------- NME


def test_nme_scores_pick_the_nearest_normalised_mean() -> None:
    means = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    feats = np.array([[10.0, 1.0], [0.2, 3.0], [-5.0, -4.0], [3.0, 3.1]])
    scores = nme_scores(feats, means)
    assert scores.shape == (4, 3)
    assert scores.argmax(axis=1).tolist() == [0, 1, 2, 1]
    assert np.all(scores <= 0)
    # Scale does not matter (both sides L2-normalised); a feature equal in direction to a mean scores 0.
    np.testing.assert_allclose(nme_scores(feats * 7.0, means * 0.1), scores, atol=1e-12)
    np.testing.assert_allclose(nme_scores(np.array([[2.0, 0.0]]), means)[0, 0], 0.0, atol=1e-7)
    # Distance between unit vectors at 90 degrees is sqrt(2).
    np.testing.assert_allclose(nme_scores(np.array([[0.0, 5.0]]), means)[0, 0], -math.sqrt(2), atol=1e-12)


# ---------------------------------------------------------------- curves


def test_average_incremental_accuracy_includes_task_zero() -> None:
    assert average_incremental_accuracy([90.0, 80.0, 70.0, 60.0]) == 75.0
    assert average_incremental_accuracy([42.0]) == 42.0
    with pytest.raises(ValueError):
        average_incremental_accuracy([])


def test_forgetting_hand_matrix() -> None:
    matrix = [
        [90.0],
        [70.0, 85.0],
        [60.0, 80.0, 75.0],
    ]
    # T = 3; groups 0 and 1 are measured.
    # g = 0: max(matrix[0][0], matrix[1][0]) - matrix[2][0] = max(90, 70) - 60 = 30
    # g = 1: max(matrix[1][1]) - matrix[2][1] = 85 - 80 = 5
    # mean = (30 + 5) / 2 = 17.5
    assert forgetting(matrix) == pytest.approx(17.5)
    # Square input with junk above the diagonal gives the same.
    square = [[90.0, 0.0, 0.0], [70.0, 85.0, 0.0], [60.0, 80.0, 75.0]]
    assert forgetting(square) == pytest.approx(17.5)
    assert forgetting([[50.0]]) is None
    with pytest.raises(ValueError, match="row 1"):
        forgetting([[1.0], [2.0]])


# ---------------------------------------------------------------- task metrics


def test_task_metrics() -> None:
    # 3 seen classes: boundaries [2, 3], known = 2 (this is task 1).
    logits = np.array([[5.0, 1.0, 0.0], [0.0, 1.0, 3.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.0]])
    labels = np.array([0, 1, 2, 2])
    # preds 0, 2, 1, 2 -> right, wrong, wrong, right
    nme = -np.abs(np.arange(3)[None, :] - labels[:, None]).astype(float)  # perfect NME
    m = task_metrics(1, logits, nme, labels, [2, 3], known=2)
    assert m.task == 1 and m.seen_classes == 3
    assert m.top1 == 50.0 and m.top5 == 100.0
    assert m.nme_top1 == 100.0 and m.nme_top5 == 100.0
    assert m.old == 50.0 and m.new == 50.0
    assert m.groups == [50.0, 50.0]
    doc = json.loads(json.dumps(m.to_json()))
    assert TaskMetrics.from_json(doc) == m
    m0 = task_metrics(0, logits, None, labels, [3], known=0)
    assert m0.old is None and m0.nme_top1 is None and m0.groups == [50.0]
    with pytest.raises(ValueError, match="logits"):
        task_metrics(1, logits[:, :2], None, labels, [2, 3], known=2)


def test_task_metrics_json_has_no_nan() -> None:
    m = TaskMetrics(task=0, seen_classes=4, top1=1.0, top5=2.0, nme_top1=None, nme_top5=None,
                    old=None, new=3.0, groups=[1.0, math.nan])
    text = json.dumps(m.to_json(), allow_nan=False)
    back = TaskMetrics.from_json(json.loads(text))
    assert math.isnan(back.groups[1]) and back.groups[0] == 1.0


# ---------------------------------------------------------------- plots


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5_000
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temp files left


def test_plot_accuracy(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "accuracy.png"
    plot_accuracy(
        {"CNN": [90.0, 80.5, 71.0], "NME": [89.0, 79.0, 72.5]}, [10, 20, 30], path, title="B0 Inc10"
    )
    _assert_png(path)
    with pytest.raises(ValueError, match="NME"):
        plot_accuracy({"NME": [1.0]}, [10, 20], tmp_path / "bad.png")


def test_plot_accuracy_matrix(tmp_path: Path) -> None:
    path = tmp_path / "matrix.png"
    plot_accuracy_matrix([[90.0], [70.0, 85.0], [60.0, math.nan, 75.0]], path)
    _assert_png(path)
    plot_accuracy_matrix([[88.0]], path)  # overwrite in place
    _assert_png(path)
