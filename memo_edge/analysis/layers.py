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
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

from memo_edge.analysis.cka import centered_gram, cka_from_grams
from memo_edge.errors import InputError
from memo_edge.model import MemoNet
from memo_edge.train.augment import TestTransform
from memo_edge.train.checkpoint import load_checkpoint, verified_states
from memo_edge.train.run import read_run_header, run_test_split, select_device
from memo_edge.utils.io import atomic_open, atomic_write_json
from memo_edge.utils.paths import check_separate

__all__ = [
    "SCHEMA_VERSION",
    "DEFAULT_MAX_FEATURES",
    "Stage",
    "newest_branch",
    "stage_layout",
    "stage_names",
    "stage_kinds",
    "stage_features",
    "analyze_layers",
    "format_layers",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
REPORT_FILE = "layers.json"
PLOT_FILE = "layers.png"
DEFAULT_MAX_FEATURES = 16384  # 16 x 32 x 32: a CIFAR ResNet's widest stage, kept whole
_BATCH = 128
_DPI = 120
# Backbones built from torchvision's ResNet keep torchvision's stage names.
_TORCHVISION_BACKBONES = {"resnet18"}


@dataclass(frozen=True)
class Stage:
    """One stage of a MemoNet: its name, where it lives and which children of that container it is.

    ``kind`` "trunk": children ``indices`` of ``model.trunk`` (shared by all tasks); "branch": children
    ``indices`` of a branch's ``.stages`` (one copy per task). Indices, not modules, so one layout
    describes every model of a run.
    """

    name: str
    kind: str  # "trunk" | "branch"
    indices: tuple[int, ...]

    def resolve(self, model: MemoNet, branch: int) -> tuple[nn.Module, ...]:
        """The modules of this stage in ``model``, taking branch stages from branch ``branch``."""
        container = model.trunk if self.kind == "trunk" else _branch_stages(model, branch)
        return tuple(container[i] for i in self.indices)


def _branch_stages(model: MemoNet, branch: int) -> nn.Sequential:
    if not 0 <= branch < len(model.branches):
        raise ValueError(f"branch {branch} out of range: the model has {len(model.branches)} branch(es)")
    stages = getattr(model.branches[branch], "stages", None)
    if not isinstance(stages, nn.Sequential):
        raise TypeError(f"branch {branch} is a {type(model.branches[branch]).__name__}, not a Branch with .stages")
    return stages


def newest_branch(model: MemoNet) -> int:
    """Index of the branch the model's latest task trained (its last one)."""
    if not len(model.branches):
        raise ValueError("the model has no branch yet: call expand() first")
    return len(model.branches) - 1


def stage_layout(model: MemoNet) -> list[Stage]:
    """The stages of ``model`` in forward order: the stem, then every stage of the trunk and of a branch.

    The stem is the leading modules up to the first stage (conv + bn + relu, plus maxpool for
    ResNet-18); it is in the trunk, or in the branch when nothing is shared (split 0). Every
    ``nn.Sequential`` child of the trunk and of ``Branch.stages`` is one stage.
    """
    newest_branch(model)
    prefix = "layer" if model.backbone_name in _TORCHVISION_BACKBONES else "stage"
    modules = [("trunk", i, m) for i, m in enumerate(model.trunk.children())]
    modules += [("branch", i, m) for i, m in enumerate(_branch_stages(model, 0).children())]
    first = next((k for k, (_, _, m) in enumerate(modules) if isinstance(m, nn.Sequential)), len(modules))
    stem = modules[:first]
    if not stem or len({kind for kind, _, _ in stem}) != 1:
        raise TypeError("expected a stem (conv, bn, relu, ...) before the first stage, "
                        "all in the trunk or all in the branch")
    layout = [Stage("stem", stem[0][0], tuple(i for _, i, _ in stem))]
    for number, (kind, index, module) in enumerate(modules[first:], start=1):
        if not isinstance(module, nn.Sequential):
            raise TypeError(f"{kind} module {type(module).__name__} after the stem is not a stage (nn.Sequential)")
        layout.append(Stage(f"{prefix}{number}", kind, (index,)))
    return layout


def stage_names(model: MemoNet) -> list[str]:
    """E.g. ["stem", "stage1", "stage2", "stage3"] (CIFAR ResNets), ["stem", "layer1", ..., "layer4"] (ResNet-18)."""
    return [s.name for s in stage_layout(model)]


def stage_kinds(model: MemoNet) -> dict[str, str]:
    """Stage name -> "trunk" (shared by all tasks) or "branch" (one copy per task)."""
    return {s.name: s.kind for s in stage_layout(model)}


def _pool_to(x: Tensor, max_features: int | None) -> Tensor:
    """Average-pool a [B, C, H, W] map spatially until C*h*w <= max_features (never below 1x1)."""
    if max_features is None or x.dim() != 4 or x[0].numel() <= max_features:
        return x
    c, h, w = x.shape[1:]
    side = max(1, math.isqrt(max_features // c))
    return F.adaptive_avg_pool2d(x, (min(side, h), min(side, w)))


def stage_features(
    model: MemoNet,
    images_uint8: np.ndarray | Tensor,
    transform: Callable[[Tensor], Tensor],
    branch: int,
    *,
    batch_size: int = _BATCH,
    max_features: int | None = None,
) -> dict[str, np.ndarray]:
    """Output of every stage for ``images_uint8`` (uint8 [N, H, W, C]): stage name -> float32 [N, features].

    Runs the trunk, then branch ``branch``'s stages, in eval mode; each output is flattened per image
    (after spatial average pooling when it has more than ``max_features`` values). ``transform`` turns
    a uint8 batch into the normalised float NCHW input (``TestTransform(mean, std)``); batches go to
    the device of the model's parameters. The model's train/eval mode is restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    layout = stage_layout(model)
    groups = [(s.name, s.resolve(model, branch)) for s in layout]
    images = images_uint8.cpu() if isinstance(images_uint8, Tensor) else torch.from_numpy(np.array(images_uint8))
    if images.dtype != torch.uint8 or images.dim() != 4 or len(images) == 0:
        raise ValueError(f"expected a non-empty uint8 batch [N, H, W, C], got {images.dtype} {tuple(images.shape)}")
    device = _model_device(model)
    out: dict[str, np.ndarray] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = transform(images[start : start + batch_size]).to(device)
                for name, modules in groups:
                    for module in modules:
                        x = module(x)
                    feat = _pool_to(x, max_features).flatten(1).to("cpu", torch.float32).numpy()
                    if name not in out:
                        out[name] = np.empty((len(images), feat.shape[1]), np.float32)
                    out[name][start : start + len(feat)] = feat  # a copy: later in-place ops cannot touch it
    finally:
        model.train(was_training)
    return out


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _stage_shapes(model: MemoNet, image_shape: Sequence[int],
                  transform: Callable[[Tensor], Tensor]) -> dict[str, list[int]]:
    """Unpooled output shape [C, H, W] of every stage for one image of ``image_shape`` (H, W, C)."""
    h, w, c = (int(v) for v in image_shape)
    shapes: dict[str, list[int]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x = transform(torch.zeros((1, h, w, c), dtype=torch.uint8)).to(_model_device(model))
            for stage in stage_layout(model):
                for module in stage.resolve(model, newest_branch(model)):
                    x = module(x)
                shapes[stage.name] = list(x.shape[1:])
    finally:
        model.train(was_training)
    return shapes


def _stage_vector(model: MemoNet, stage: Stage, branch: int) -> Tensor:
    """All learnable parameters of one stage, flattened and concatenated (float64)."""
    params = [p.detach().reshape(-1).double() for m in stage.resolve(model, branch) for p in m.parameters()]
    return torch.cat(params) if params else torch.zeros(0, dtype=torch.float64)


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
    params = {s.name: _stage_vector(model, s, branch) for s in stage_layout(model)}
    return _Snapshot(task, branch, grams, params)


def _compare(a: _Snapshot, b: _Snapshot, names: Sequence[str]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for name in names:
        cka = cka_from_grams(a.grams[name], b.grams[name])
        out[name] = {"cka": None if math.isnan(cka) else cka, "movement": _movement(a.params[name], b.params[name])}
    return out


def _sample_images(header: dict[str, Any], count: int) -> tuple[np.ndarray, int]:
    """A fixed sample (numpy seed 0) of test images of task 0's classes; also how many there were."""
    test = run_test_split(header, 0)
    if len(test) < 2:
        raise InputError(f"the test split of {header['config']['dataset']} has {len(test)} image(s) of task 0's "
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
    norm = header["normalization"]
    transform = TestTransform(norm["mean"], norm["std"])
    sample, available = _sample_images(header, images)
    log.info("layer analysis of %s: %d tasks, %d test images of task 0's classes", run_dir, tasks, len(sample))

    first = prev = None
    layout: list[Stage] = []
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
            shapes = _stage_shapes(model, sample.shape[1:], transform)
            feature_sizes = {s.name: _used_features(shapes[s.name], max_features) for s in layout}
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

    cfg = header["config"]
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run": str(run_dir),
        "title": header.get("title", ""),
        "backbone": states[0].get("backbone"),
        "split": states[0].get("split"),
        "tasks": tasks,
        "images": {
            "count": int(len(sample)),
            "available": int(available),
            "from": f"test split of {cfg['dataset']}, the {header['scenario']['task_sizes'][0]} classes of task 0",
            "seed": 0,
        },
        "max_features": max_features,
        "transitions": transitions,
        "stages": [
            {
                "name": s.name,
                "kind": s.kind,
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


def _used_features(shape: Sequence[int], max_features: int) -> int:
    c, h, w = (int(v) for v in shape)
    if c * h * w <= max_features:
        return c * h * w
    side = max(1, math.isqrt(max_features // c))
    return c * min(side, h) * min(side, w)


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


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
