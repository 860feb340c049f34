"""Which layers of a MEMO run generalise and which specialise: stage-wise CKA and weight movement.

MEMO's premise (Zhou et al., ICLR 2023, Sec. 4): shallow layers learn features that transfer across
tasks, deep layers specialise. ``analyze_layers`` measures that on the checkpoints of a run. For every
pair of successive tasks (t-1, t) and every stage of the backbone it reports

- the linear CKA between the stage's outputs under model t-1 and model t on one fixed set of test
  images (of the classes of task 0, which every model has seen);
- the relative weight movement ||W_t - W_{t-1}|| / ||W_{t-1}|| over the stage's parameters.

Trunk stages (shared) compare the trunks of the two models. Branch stages compare branch t-1 of model
t-1 with branch t of model t: the new branch starts as a copy of the previous one, so this is how far
training on task t moved it (its specialisation). The same figures are reported between the first and
the last model (branch 0 against the last branch).

Stage outputs wider than ``max_features`` values are average-pooled spatially first (ImageNet-size
maps; CIFAR-size maps of the default cap pass unchanged); ``layers.json`` records the size used.
The stages are the backbone's declared ones (``memo_edge.analysis.stages``); the figure is drawn by
``memo_edge.analysis.plots``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from memo_edge.analysis.cka import centered_gram, cka_from_grams
from memo_edge.analysis.plots import plot_layers
from memo_edge.analysis.stages import (
    newest_branch,
    stage_features,
    stage_layout,
    stage_names,
    stage_shapes,
    stage_vector,
    used_features,
)
from memo_edge.errors import InputError
from memo_edge.model import MemoNet
from memo_edge.model.backbones import StageInfo
from memo_edge.train.augment import TestTransform
from memo_edge.train.checkpoint import load_checkpoint, verified_states
from memo_edge.train.device import select_device
from memo_edge.train.rundir import RunHeader, read_run_header, run_test_split
from memo_edge.utils.io import atomic_write_json
from memo_edge.utils.paths import check_separate

__all__ = ["SCHEMA_VERSION", "DEFAULT_MAX_FEATURES", "analyze_layers", "format_layers"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
REPORT_FILE = "layers.json"
PLOT_FILE = "layers.png"
DEFAULT_MAX_FEATURES = 16384  # 16 x 32 x 32: a CIFAR ResNet's widest stage, kept whole


def _movement(before: Tensor, after: Tensor) -> float | None:
    """||after - before|| / ||before||; None for a stage without parameters (or all-zero ones)."""
    if before.shape != after.shape:
        raise InputError(f"stage parameters changed shape between tasks ({before.numel()} vs {after.numel()})")
    base = float(torch.linalg.vector_norm(before))
    if base == 0.0:
        return None
    return float(torch.linalg.vector_norm(after - before)) / base


@dataclass
class _Snapshot:
    """What the comparison needs from one task's model: per stage a Gram matrix and a parameter vector."""

    task: int
    branch: int
    grams: dict[str, np.ndarray]
    params: dict[str, Tensor]


def _snapshot(model: MemoNet, task: int, images: np.ndarray, transform: TestTransform, max_features: int) -> _Snapshot:
    # Each model is seen through its newest branch: the one its task trained (branch ``task`` in MEMO).
    branch = newest_branch(model)
    features = stage_features(model, images, transform, branch, max_features=max_features)
    grams = {}
    for name in list(features):
        grams[name] = centered_gram(features.pop(name))  # drop each stage's features once reduced
    params = {s.name: stage_vector(model, s, branch) for s in stage_layout(model)}
    return _Snapshot(task, branch, grams, params)


def _compare(a: _Snapshot, b: _Snapshot, names: Sequence[str]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for name in names:
        cka = cka_from_grams(a.grams[name], b.grams[name])
        out[name] = {"cka": None if math.isnan(cka) else cka, "movement": _movement(a.params[name], b.params[name])}
    return out


def _sample_images(header: RunHeader, count: int) -> tuple[np.ndarray, int]:
    """A fixed sample (numpy seed 0) of test images of task 0's classes; also how many there were."""
    test = run_test_split(header.config, header.scenario, 0)
    if len(test) < 2:
        raise InputError(f"the test split of {header.config.dataset} has {len(test)} image(s) of task 0's "
                         "classes; CKA needs at least 2")
    pick = np.sort(np.random.default_rng(0).permutation(len(test))[: min(count, len(test))])
    return test.take(pick), len(test)


def analyze_layers(
    run_dir: Path,
    out: Path,
    *,
    images: int = 500,
    max_features: int = DEFAULT_MAX_FEATURES,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Stage-wise CKA and weight movement across the tasks of ``run_dir``; writes ``out/layers.json``
    and ``out/layers.png`` and returns the report (the content of layers.json)."""
    run_dir, out = Path(run_dir), Path(out)
    if images < 2:
        raise InputError(f"--images must be at least 2, got {images}")
    if max_features < 1:
        raise InputError(f"max_features must be at least 1, got {max_features}")
    if not run_dir.is_dir():
        raise InputError(f"run directory {run_dir} does not exist")
    device = select_device(str(device))  # a bad --device fails before any work
    header = read_run_header(run_dir)
    check_separate(out, run_dir, what="layer analysis")  # after the header: "not a run" says more
    verified = verified_states(run_dir)
    tasks = len(verified)
    if tasks < 2:
        raise InputError(f"{run_dir}: layer analysis needs at least 2 tasks, the run has {tasks} finished")
    transform = TestTransform(header.mean, header.std)
    sample, available = _sample_images(header, images)
    log.info("layer analysis of %s: %d tasks, %d test images of task 0's classes", run_dir, tasks, len(sample))

    first = prev = None
    layout: list[StageInfo] = []
    shapes: dict[str, list[int]] = {}
    feature_sizes: dict[str, int] = {}
    transitions: list[dict[str, Any]] = []
    per_stage: dict[str, dict[str, list[float | None]]] = {}
    states: list[dict[str, Any]] = []
    for task in range(tasks):
        ckpt = load_checkpoint(run_dir, task, state=verified[task])
        model = ckpt.model.to(device)
        states.append(ckpt.state)
        if task == 0:
            layout = stage_layout(model)
            shapes = stage_shapes(model, sample.shape[1:], transform)
            feature_sizes = {s.name: used_features(shapes[s.name], max_features) for s in layout}
        elif stage_layout(model) != layout:
            raise InputError(f"{run_dir}: task-{task:02d} has other stages than task-00 ({stage_names(model)})")
        snap = _snapshot(model, task, sample, transform, max_features)
        names = [s.name for s in layout]
        if prev is not None:
            figures = _compare(prev, snap, names)
            transitions.append({
                "from_task": task - 1,
                "to_task": task,
                "branches": [prev.branch, snap.branch],
                "trunk_frozen": bool(ckpt.state.get("trunk_frozen", False)),
                "stages": figures,
            })
            for name in names:
                entry = per_stage.setdefault(name, {"cka": [], "movement": []})
                entry["cka"].append(figures[name]["cka"])
                entry["movement"].append(figures[name]["movement"])
        else:
            first = snap
        prev = snap
        del model, ckpt
    assert first is not None and prev is not None
    first_last = _compare(first, prev, [s.name for s in layout])

    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run": str(run_dir),
        "title": header.title,
        "backbone": states[0].get("backbone"),
        "split": states[0].get("split"),
        "tasks": tasks,
        "images": {
            "count": int(len(sample)),
            "available": int(available),
            "from": f"test split of {header.config.dataset}, the {header.scenario.task_sizes[0]} classes of task 0",
            "seed": 0,
        },
        "max_features": max_features,
        "transitions": transitions,
        "stages": [
            {
                "name": s.name,
                "kind": s.part,
                "shape": shapes[s.name],
                "features": feature_sizes[s.name],
                "cka": per_stage[s.name]["cka"],
                "movement": per_stage[s.name]["movement"],
                "mean_cka": _mean(per_stage[s.name]["cka"]),
                "mean_movement": _mean(per_stage[s.name]["movement"]),
                "first_last": {"from_task": 0, "to_task": tasks - 1, "branches": [first.branch, prev.branch],
                               **first_last[s.name]},
            }
            for s in layout
        ],
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / REPORT_FILE, report)
    plot_layers(report, out / PLOT_FILE)
    return report


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_layers(report: dict[str, Any]) -> str:
    """A short table for the terminal: per stage its kind, mean CKA and movement over the transitions,
    and CKA between the first and the last model."""
    last = report["tasks"] - 1
    head = ("stage", "kind", "mean CKA", "mean movement", f"CKA 0->{last}")
    rows = [
        (s["name"], s["kind"], _fmt(s["mean_cka"]), _fmt(s["mean_movement"]), _fmt(s["first_last"]["cka"]))
        for s in report["stages"]
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(row: Sequence[str]) -> str:  # names left-aligned, numbers right-aligned
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    frozen = sum(t["trunk_frozen"] for t in report["transitions"])
    lines = [
        f"layers of {report['run']}: {report['tasks']} tasks, "
        f"{report['images']['count']} test images of task 0's classes"
        + (f", trunk frozen in {frozen}/{len(report['transitions'])} transitions" if frozen else ""),
        line(head),
        *(line(r) for r in rows),
        "CKA: 1 = same representation as the previous task's model; movement: relative change of the weights",
    ]
    return "\n".join(lines)
