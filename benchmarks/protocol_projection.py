"""The paper's protocol shape, run short and projected to full length: how long would the whole run take here?

Runs `memo_edge.train.run.train` (what `memo-edge train` runs) in the shape of the paper's CIFAR-100
protocol: B0Inc10 over 100 classes (10 tasks), ResNet-32, batch 128, 2,000 exemplars, every task with a
few epochs instead of 200 (task 0) / 170. Each task's steady epoch time is measured and projected:

- epoch time: the median gap between consecutive epoch ends (the trainer logs every epoch's end), so
  the first epoch's warm-up (cuDNN's first calls, the task's upload) is not multiplied by 170; with a
  single epoch per task, the task's training seconds (results.json ``train_seconds``) instead;
- the rest of a task (herding, class means, evaluation, checkpoint, the first epoch's warm-up):
  wall time minus epochs x epoch time, which does not grow with the number of epochs;
- projected task = full epochs x epoch time + the rest; tasks the run did not reach (``--budget-s``
  stops it after the task in progress) take the last measured task's figures and are marked as such.

Speed does not depend on pixel values, so synthetic CIFAR-shaped data (benchmarks/stage_gpu_data.py
synthetic) stands in for CIFAR-100 on a machine without it; the accuracy it reports then means nothing.

    python3 benchmarks/protocol_projection.py --data DIR --device cuda --precision bf16 --stack-frozen \\
        --init-epochs 3 --epochs 2 --json results.json --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import device_name, write_section  # noqa: E402

_EPOCH_LINE = re.compile(r"^task (\d+)/(\d+) epoch (\d+): loss")


def full_epochs(num_tasks: int) -> tuple[int, ...]:
    """The paper's epochs: 200 for task 0, 170 for every later task."""
    return (200,) + (170,) * (num_tasks - 1)


@dataclass(frozen=True)
class TaskTiming:
    """What one finished task measured."""

    task: int
    epochs: int
    epoch_s: float  # steady time of one epoch
    wall_s: float  # the whole task: training, herding, class means, evaluation, checkpoint
    images_per_s: float = 0.0
    top1: float = float("nan")

    @property
    def rest_s(self) -> float:
        """What does not grow with the epochs: the wall time beyond epochs x the steady epoch time."""
        return max(0.0, self.wall_s - self.epochs * self.epoch_s)


def epoch_time(ends: list[float], epochs: int, train_seconds: float) -> float:
    """The steady epoch time of a task from its epoch-end timestamps (median gap), or its training
    seconds over its epochs when fewer than two epochs ended."""
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    if gaps:
        return statistics.median(gaps)
    return train_seconds / max(epochs, 1)


def project(timings: list[TaskTiming], epochs_by_task: tuple[int, ...]) -> list[dict[str, Any]]:
    """One row per task of the full protocol: measured tasks at their own figures, later ones at the last
    measured task's (``extrapolated``)."""
    if not timings:
        raise ValueError("no task finished: nothing to project")
    rows = []
    for task, epochs in enumerate(epochs_by_task):
        measured = task < len(timings)
        t = timings[task] if measured else timings[-1]
        rows.append({"task": task, "full_epochs": epochs, "epoch_s": t.epoch_s, "rest_s": t.rest_s,
                     "projected_s": epochs * t.epoch_s + t.rest_s, "measured": measured,
                     "epochs_run": t.epochs if measured else 0, "wall_s": t.wall_s if measured else float("nan"),
                     "images_per_s": t.images_per_s if measured else float("nan"),
                     "top1": t.top1 if measured else float("nan")})
    return rows


class _EpochEnds(logging.Handler):
    """Collects the trainer's "task i/n epoch e: loss ..." records with their timestamps."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.ends: dict[int, list[float]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = _EPOCH_LINE.match(record.getMessage())
        if match:
            self.ends.setdefault(int(match.group(1)) - 1, []).append(record.created)


class _Stop(Exception):
    """Raised after a task once the time budget is spent: the finished tasks are kept."""


def run(args: argparse.Namespace) -> dict[str, Any]:
    from memo_edge.train.config import TrainConfig
    from memo_edge.train.run import train

    ends = _EpochEnds()
    logger = logging.getLogger("memo_edge.train.task")
    logger.addHandler(ends)
    logger.setLevel(logging.DEBUG)
    config = TrainConfig(out=str(args.out), dataset=f"npz:{args.data}", scenario=args.scenario, shuffle=False,
                         backbone=args.backbone, init_epochs=args.init_epochs, epochs=args.epochs,
                         batch_size=args.batch_size, memory=str(args.memory), device=args.device,
                         precision=args.precision, stack_frozen=args.stack_frozen, seed=args.seed)
    started = time.perf_counter()
    timings: list[TaskTiming] = []
    header: dict[str, Any] = {}

    def on_task(record: Any, num_tasks: int) -> None:
        epochs = args.init_epochs if record.task == 0 else args.epochs
        timings.append(TaskTiming(record.task, epochs, epoch_time(ends.ends.get(record.task, []), epochs,
                                                                  record.train_seconds),
                                  record.wall_time_s, record.train_images_per_s, record.metrics["top1"]))
        report = _report(args, timings, header, time.perf_counter() - started, num_tasks)
        if args.json:  # rewritten after every task: a killed run still leaves what it measured
            _write_json(args.json, report)
        print(f"task {record.task + 1}/{num_tasks}: {timings[-1].epoch_s:.2f} s/epoch, rest {timings[-1].rest_s:.1f} s, "
              f"projected total {report['projected_total_s'] / 60:.1f} min", flush=True)
        if args.budget_s and time.perf_counter() - started > args.budget_s and record.task + 1 < num_tasks:
            raise _Stop

    try:
        results = train(config, force=True, on_task=on_task)
        header.update({k: results.get(k) for k in ("device", "precision", "numerics", "versions")})
    except _Stop:
        print(f"stopped after {len(timings)} tasks: --budget-s {args.budget_s} spent", flush=True)
    finally:
        logger.removeHandler(ends)
    if not header:
        saved = json.loads((Path(args.out) / "config.json").read_text())
        header.update({k: saved.get(k) for k in ("device", "precision", "numerics", "versions")})
    num_tasks = len(json.loads((Path(args.out) / "config.json").read_text())["scenario"]["task_sizes"])
    report = _report(args, timings, header, time.perf_counter() - started, num_tasks)
    if args.json:
        _write_json(args.json, report)
    return report


def _report(args: argparse.Namespace, timings: list[TaskTiming], header: dict[str, Any], elapsed: float,
            num_tasks: int) -> dict[str, Any]:
    rows = project(timings, full_epochs(num_tasks))
    return {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "header": header, "elapsed_s": elapsed, "tasks": [asdict(t) for t in timings], "projection": rows,
            "projected_total_s": sum(r["projected_s"] for r in rows),
            "extrapolated_tasks": sum(not r["measured"] for r in rows)}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from memo_edge.utils.io import atomic_write_json

    atomic_write_json(path, data)


def to_markdown(report: dict[str, Any], machine: str) -> str:
    s = report["settings"]
    total = report["projected_total_s"]
    write = f" --write {s['write']}" if s.get("write") else ""
    scenario = "" if s["scenario"] == "B0Inc10" else f" --scenario {s['scenario']}"
    lines = [
        f"## The paper's protocol shape on {s['device']}, projected to 200/170 epochs "
        f"({s['precision']}{', stacked' if s['stack_frozen'] else ''})",
        "",
        f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- where: {machine}, Python {platform.python_version()}; numerics: {json.dumps(report['header'].get('numerics'))}",
        f"- what: {s['scenario']} over the classes of `{s['data']}`, {s['backbone']}, batch {s['batch_size']}, "
        f"{s['memory']} exemplars, {s['init_epochs']} epochs for task 0 and {s['epochs']} after; each task's steady "
        "epoch time (median gap between epoch ends) x the paper's epochs + the task's rest (herding, class means, "
        "evaluation, checkpoint, warm-up)",
        f"- command: `python3 benchmarks/protocol_projection.py --data {s['data']} --device {s['device']} "
        f"--precision {s['precision']}{' --stack-frozen' if s['stack_frozen'] else ''}{scenario} "
        f"--backbone {s['backbone']} --memory {s['memory']} --init-epochs {s['init_epochs']} "
        f"--epochs {s['epochs']}{write}`",
        f"- projected full protocol: **{total / 60:.1f} min** ({len(report['tasks'])} of {len(report['projection'])} "
        "tasks measured"
        + (f", {report['extrapolated_tasks']} extrapolated from the last measured task, a lower bound since every "
           "task adds a branch" if report["extrapolated_tasks"] else "")
        + f"); this short run took {report['elapsed_s']:.0f} s",
        "",
        "| task | epochs run | s/epoch (steady) | train images/s | rest (s) | wall (s) | full epochs | projected (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["projection"]:
        if r["measured"]:
            lines.append(f"| {r['task']} | {r['epochs_run']} | {r['epoch_s']:.2f} | {r['images_per_s']:.0f} | "
                         f"{r['rest_s']:.1f} | {r['wall_s']:.1f} | {r['full_epochs']} | {r['projected_s']:.0f} |")
        else:
            lines.append(f"| {r['task']} | - | ({r['epoch_s']:.2f}) | - | ({r['rest_s']:.1f}) | - | {r['full_epochs']} | "
                         f"({r['projected_s']:.0f}) |")
    return "\n".join(lines) + "\n"


def where(device: str) -> str:
    import torch

    return f"{device} ({device_name(torch.device(device))}), torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="an npz dataset of 100 classes (e.g. synthetic)")
    parser.add_argument("--out", type=Path, default=Path("runs/protocol-projection"), help="the run directory")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--stack-frozen", action="store_true")
    parser.add_argument("--backbone", default="resnet32")
    parser.add_argument("--scenario", default="B0Inc10", help="the paper's: B0Inc10 over 100 classes")
    parser.add_argument("--init-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--memory", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1993)
    parser.add_argument("--budget-s", type=float, default=0.0, help="stop after the task that passes this many seconds")
    parser.add_argument("--json", type=Path, help="the report as JSON, rewritten after every task")
    parser.add_argument("--write", type=Path, help="Markdown file whose section to replace, e.g. docs/benchmarks.md")
    args = parser.parse_args(argv)
    report = run(args)
    section = to_markdown(report, where(args.device))
    print(section)
    if args.write:
        write_section(args.write, f"protocol_projection_{args.device.split(':')[0]}", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
