"""``memo-edge compare`` and ``memo-edge curve``: methods under one total byte budget.

Every method trains with the same trainer, data, scenario, schedule, herding and metrics; only the
model differs (``methods.METHODS``). Under a total budget B, a method whose model takes M bytes after
the last task keeps (B - M) // bytes-per-exemplar exemplars for the whole run (the paper's fixed
memory per method), computed on the live models. ``aligned`` = DER's bytes: T backbones + 2,000
exemplars. Exemplar codecs are a second dimension: every (method, codec) pair trains under the same
bytes, a codec storing as many exemplars as fit in them (``memory/codec.py``).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from memo_edge.data.datasets import dataset_dirs, load_dataset
from memo_edge.data.scenario import build_scenario
from memo_edge.errors import InputError
from memo_edge.model.methods import aligned_budget_bytes, get_method, method_model_bytes
from memo_edge.memory.alignment import exemplar_bytes, exemplars_that_fit
from memo_edge.memory.codec import parse_codec
from memo_edge.train.config import TrainConfig, default_scenario
from memo_edge.train.run import train
from memo_edge.train.rundir import holds_run_of
from memo_edge.utils.io import atomic_open, atomic_write_bytes, atomic_write_json
from memo_edge.utils.paths import check_separate

__all__ = ["CompareRow", "budget_bytes", "method_exemplars", "compare", "write_table", "auc", "choose_backbone",
           "curve", "CURVE_BACKBONES"]

log = logging.getLogger(__name__)
MIB = 2**20
# Smaller CIFAR backbones for small budgets, as in the paper's memory curves (largest first).
CURVE_BACKBONES = ("resnet32", "resnet26", "resnet20", "resnet14")


@dataclass(frozen=True)
class CompareRow:
    method: str
    backbone: str
    budget_bytes: int
    model_bytes: int  # after the last task
    memory: int  # exemplars the budget assigns to the method
    exemplars: int  # exemplars stored after the last task (fewer if the data has fewer images)
    average_accuracy: float
    last_accuracy: float
    accuracy_curve: list[float]
    codec: str = "raw"  # how the exemplars were stored
    exemplar_bytes: int = 0  # stored exemplar bytes after the last task
    codec_seconds: float = 0.0  # encoding + decoding under the codec, all tasks

    @property
    def label(self) -> str:
        return arm_label(self.method, self.codec)


def arm_label(method: str, codec: str) -> str:
    """How a (method, codec) pair is named in tables and plots: ``memo``, ``memo jpeg:75``."""
    return method if codec == "raw" else f"{method} {codec}"


def budget_bytes(budget: str, backbone: str, num_tasks: int, bytes_per_exemplar: int) -> int:
    """``aligned`` (DER: T backbones + 2,000 exemplars) or a size in MiB, as bytes."""
    if budget.strip().lower() == "aligned":
        return aligned_budget_bytes(backbone, num_tasks, bytes_per_exemplar)
    try:
        return int(float(budget) * MIB)
    except ValueError:
        raise InputError(f"--memory must be 'aligned' or a size in MiB, got {budget!r}") from None


def method_exemplars(method: str, backbone: str, num_tasks: int, total: int, bytes_per_exemplar: int,
                     num_classes: int, *, split: int | None = None) -> int:
    """Exemplars ``method`` keeps under ``total`` bytes; refuse when not even one per class fits.

    ``split`` is the run's ``--split`` (MEMO honours it, so its model bytes depend on it).
    """
    model = _model_bytes(method, backbone, num_tasks, split)
    count = exemplars_that_fit(total - model, bytes_per_exemplar)
    if count < num_classes:
        raise InputError(f"{method} with {backbone}: the model takes {model:,} B of the {total:,} B budget, "
                         f"leaving {count} exemplars for {num_classes} classes")
    return count


def _model_bytes(method: str, backbone: str, num_tasks: int, split: int | None) -> int:
    return method_model_bytes(get_method(method), backbone, num_tasks, split=split)


def codec_specs(value: str) -> list[str]:
    """``--exemplar-codec`` of compare and curve: comma-separated codecs, each checked and canonical."""
    try:
        specs = [parse_codec(v).spec for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise InputError(f"--exemplar-codec: {exc}") from None
    if not specs or len(set(specs)) != len(specs):
        raise InputError(f"--exemplar-codec: expected distinct comma-separated codecs, got {value!r}")
    return specs


def run_name(method: str, codec: str) -> str:
    """The run directory of a (method, codec) pair: ``memo``, ``memo-jpeg75``, ``replay-png``."""
    return method if codec == "raw" else f"{method}-{codec.replace(':', '')}"


def compare(base: TrainConfig, methods: Sequence[str], budget: str, out: Path, *, force: bool = False,
            on_task: Callable[..., None] | None = None) -> list[CompareRow]:
    """Train every method, under each of ``base.exemplar_codec``'s codecs, under one budget into
    ``out/<method>[-<codec>]/``; an interrupted or finished run of the same configuration is continued
    (so a crash costs at most one task)."""
    check_separate(out, *dataset_dirs(base.dataset, base.data_dir), what="comparison")
    codecs = codec_specs(base.exemplar_codec)
    total, num_tasks, img, num_classes = _budget_of(base, budget)
    rows = []
    for name in methods:
        count = method_exemplars(name, base.backbone, num_tasks, total, img, num_classes, split=base.split)
        for codec in codecs:  # the same bytes: count raw exemplars' worth, whatever the codec stores in them
            config = replace(base, method=name, memory=str(count), memory_per_class=None, memory_bytes=None,
                             exemplar_codec=codec, out=str(out / run_name(name, codec)),
                             codec_mix=base.codec_mix if parse_codec(codec).lossy else 0.0)  # raw, png: nothing to mix
            log.info("%s: %d raw exemplars' bytes (%s B) as %s, model %s B", name, count, f"{count * img:,}", codec,
                     f"{_model_bytes(name, base.backbone, num_tasks, base.split):,}")
            resume = holds_run_of(Path(config.out), config) and not force
            results = train(config, resume=resume, force=force, on_task=on_task)
            rows.append(_row(name, base.backbone, total, count, results, codec))
    write_table(rows, out)
    return rows


def _budget_of(base: TrainConfig, budget: str) -> tuple[int, int, int, int]:
    data_dir = Path(base.data_dir).expanduser() if base.data_dir else None
    dataset = load_dataset(base.dataset, data_dir=data_dir, image_size=base.image_size)
    num_classes = base.classes or dataset.num_classes
    scenario = build_scenario(base.scenario or default_scenario(base.dataset), num_classes, shuffle=False)
    img = exemplar_bytes(dataset.image_shape)
    return budget_bytes(budget, base.backbone, scenario.num_tasks, img), scenario.num_tasks, img, num_classes


def _row(method: str, backbone: str, total: int, memory: int, results: dict[str, Any], codec: str = "raw") -> CompareRow:
    s, last = results["summary"], results["tasks"][-1]
    return CompareRow(method, backbone, total, last["model_bytes"], memory, last["exemplars"],
                      round(s["average_incremental_accuracy"], 2), round(s["last_accuracy"], 2),
                      [round(a, 2) for a in s["accuracy_curve"]], codec, last["exemplar_bytes"],
                      round(sum(t.get("codec_seconds", 0.0) for t in results["tasks"]), 3))


def write_table(rows: Sequence[CompareRow], out: Path) -> None:
    """comparison.json, comparison.csv, comparison.md and comparison.png (accuracy per task per method)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "comparison.json", {"schema_version": 1, "rows": [asdict(r) for r in rows]})
    fields = ["method", "codec", "backbone", "budget_bytes", "model_bytes", "memory", "exemplars", "exemplar_bytes",
              "average_accuracy", "last_accuracy", "codec_seconds"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    atomic_write_bytes(out / "comparison.csv", buf.getvalue().encode())
    lines = ["| method | codec | backbone | total MiB | model MiB | exemplar memory (raw exemplars) | stored | stored MiB | "
             "average acc. | last acc. |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.method} | {r.codec} | {r.backbone} | {r.budget_bytes / MIB:.2f} | {r.model_bytes / MIB:.2f} | {r.memory} | "
              f"{r.exemplars} | {r.exemplar_bytes / MIB:.2f} | {r.average_accuracy:.2f} | {r.last_accuracy:.2f} |" for r in rows]
    atomic_write_bytes(out / "comparison.md", ("\n".join(lines) + "\n").encode())
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    for r in rows:
        ax.plot(range(1, len(r.accuracy_curve) + 1), r.accuracy_curve, marker="o", label=f"{r.label} ({r.exemplars} exemplars)")
    ax.set(xlabel="task", ylabel="top-1 accuracy on seen classes (%)", title=f"{rows[0].budget_bytes / MIB:.2f} MiB total" if rows else "")
    ax.set_xticks(range(1, max((len(r.accuracy_curve) for r in rows), default=1) + 1))
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_open(out / "comparison.png", "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")


def auc(memory_mib: Sequence[float], accuracy_percent: Sequence[float]) -> float:
    """Area under accuracy (as a fraction) against memory (MiB), trapezoid rule (the paper's AUC)."""
    x, y = np.asarray(memory_mib, float), np.asarray(accuracy_percent, float) / 100.0
    if len(x) < 2:
        raise ValueError("an AUC needs at least two budgets")
    order = np.argsort(x)
    x, y = x[order], y[order]
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def choose_backbone(method: str, total: int, num_tasks: int, num_classes: int, bytes_per_exemplar: int,
                    *, min_per_class: int = 5, candidates: Sequence[str] = CURVE_BACKBONES,
                    split: int | None = None) -> str | None:
    """The largest candidate whose final model leaves ``min_per_class`` exemplars per class (our rule)."""
    for backbone in candidates:
        model = _model_bytes(method, backbone, num_tasks, split)
        if total - model >= min_per_class * num_classes * bytes_per_exemplar:
            return backbone
    return None


def curve(base: TrainConfig, methods: Sequence[str], budgets_mib: Sequence[float], out: Path, *,
          force: bool = False, on_task: Callable[..., None] | None = None) -> dict[str, Any]:
    """Accuracy against total memory for each method; AUC-A and AUC-L; curve.json/.md/.png."""
    check_separate(out, *dataset_dirs(base.dataset, base.data_dir), what="curve")
    _, num_tasks, img, num_classes = _budget_of(base, "aligned")
    codecs = codec_specs(base.exemplar_codec)
    # One curve per method and codec: "memo", "memo jpeg:75", ...
    points: dict[str, list[dict[str, Any]]] = {arm_label(m, c): [] for m in methods for c in codecs}
    for mib in budgets_mib:
        total = int(mib * MIB)
        for name in methods:
            backbone = choose_backbone(name, total, num_tasks, num_classes, img, split=base.split)
            if backbone is None:
                log.warning("%s does not fit %.2f MiB with any backbone; skipped", name, mib)
                continue
            config = replace(base, backbone=backbone)
            for row in compare(config, [name], str(mib), out / f"{mib:g}MiB", force=force, on_task=on_task):
                points[row.label].append({"mib": mib, **asdict(row)})
    summary = {m: _auc_of(p) for m, p in points.items()}
    report = {"schema_version": 1, "budgets_mib": list(budgets_mib), "points": points, "auc": summary}
    atomic_write_json(out / "curve.json", report)
    _write_curve(report, out)
    return report


def _auc_of(points: list[dict[str, Any]]) -> dict[str, float | None]:
    if len(points) < 2:
        return {"auc_a": None, "auc_l": None}
    mib = [p["mib"] for p in points]
    return {"auc_a": auc(mib, [p["average_accuracy"] for p in points]), "auc_l": auc(mib, [p["last_accuracy"] for p in points])}


def _write_curve(report: dict[str, Any], out: Path) -> None:
    lines = ["| method | AUC-A | AUC-L | points (MiB: backbone, avg / last) |", "|---|---|---|---|"]
    for m, pts in report["points"].items():
        a = report["auc"][m]
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        detail = "; ".join(f"{p['mib']:g}: {p['backbone']}, {p['average_accuracy']:.1f} / {p['last_accuracy']:.1f}" for p in pts)
        lines.append(f"| {m} | {fmt(a['auc_a'])} | {fmt(a['auc_l'])} | {detail} |")
    atomic_write_bytes(out / "curve.md", ("\n".join(lines) + "\n").encode())
    fig = Figure(figsize=(10, 4))
    for i, key in enumerate(("average_accuracy", "last_accuracy")):
        ax = fig.add_subplot(1, 2, i + 1)
        for m, pts in report["points"].items():
            ax.plot([p["mib"] for p in pts], [p[key] for p in pts], marker="o", label=m)
        ax.set(xlabel="total memory (MiB)", ylabel=f"{key.split('_')[0]} accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    with atomic_open(out / "curve.png", "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
