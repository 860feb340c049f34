"""Wall time of ``memo-edge update`` at T = 2, 5, 10 tasks, split into training and the rest.

For each T: a randomly initialised ``MemoNet("resnet32")`` expanded T times by 10 classes (each new
branch perturbed, as trained branches differ: the ONNX exporter's search for equal initializers
is slow on identical copies), written
as a package with ``package_model`` (like ``benchmarks/runtime_speed.py``'s ``build``), its budget
room for one more task plus the same exemplar memory at every T (``--exemplars`` images: per class
it shrinks as T grows, the total stays). Then ``update_package`` learns the same 10 new classes
(random uint8 32x32x3 images, the same seed at every T) with the same recipe, and the wall time is
split with its ``on_event`` hook:

- before: from the call to the ``checked`` event (lock, package checks, reading the new data);
- training: ``checked`` to ``exporting`` (model and exemplars loaded, ``learn_task``: training,
  weight alignment, herding, class means);
- after: ``exporting`` to the return (export of the new files, verification, commit, garbage
  collection), itself split by the phases the library marks (``memo_edge.utils.phases``, recorded with
  ``record()`` from the ``exporting`` event on) and, inside them,
  around the parts whose work grows with T: the full graph's export, PyTorch's reference through
  every branch, the ONNX Runtime sessions and the end-to-end runs (``COLUMNS``; exclusive times).

The non-training part is before + after. The packages are rebuilt for every repeat (an update
changes the package) and the runs are interleaved (T = 2, 5, 10, 2, 5, 10, ...); the median of the
repeats is reported. Random weights trained on random images make the int8 check fail (rightly), so
the update runs with ``int8=False``; what re-making ``full-int8`` would add is timed separately:
``quantize_full`` of the new version's full graph, calibrated on its exemplars as ``update`` does.

    .venv/bin/python benchmarks/update_speed.py [--tasks 2,5,10] [--repeats 2] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from memo_edge.device.update import UpdateConfig, update_package
from memo_edge.options import UpdateOptions
from memo_edge.export.quantize import calibration_images, quantize_full
from memo_edge.runtime.package import open_package
from memo_edge.utils.phases import record

from _package import CIFAR, random_package  # noqa: E402
from _report import cpu_name, load_average, write_section  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

TARGET = 1.3  # non-training part at T = 10 over T = 2 (the update issue)
# Columns of the table after "before training", in order: phases the library marks (memo_edge/utils/phases.py;
# the rest of verify and of export as remainders).
COLUMNS = ("full_graph", "branch_graph", "model_blobs", "torch_reference", "ort_session", "split_path", "full_graph_run",
           "verify_package", "commit", "collect_garbage")
SCALES_WITH_T = ("full_graph", "torch_reference", "ort_session", "split_path", "full_graph_run")


def build(tasks: int, out: Path, exemplar_count: int) -> None:
    """A CIFAR-sized ResNet-32 package of ``tasks`` tasks of 10 classes, budget room for one more."""
    random_package(out, tasks, per_class=max(1, exemplar_count // (10 * tasks)), spare_branches=1,
                   budget_exemplars=exemplar_count, int8=False, jitter=0.01)


def new_classes(root: Path, per_class: int) -> str:
    """10 new classes of random images, the same at every T."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (10 * per_class, *CIFAR.shape), dtype=np.uint8)
    y = np.repeat(np.arange(10, dtype=np.int64), per_class)
    root.mkdir(parents=True)
    files = []
    for split, (images, labels) in (("train", (x, y)), ("test", (x[:: per_class], y[:: per_class]))):
        np.savez(root / f"{split}-00.npz", x=images, y=labels)
        files.append({"file": f"{split}-00.npz", "sha256": hashlib.sha256((root / f"{split}-00.npz").read_bytes()).hexdigest()})
    (root / "meta.json").write_text(json.dumps({"class_names": [f"new{i}" for i in range(10)], "files": files}))
    return f"npz:{root}"


def measure(tasks: int, built: Path, work: Path, data: str, args: argparse.Namespace) -> dict[str, float]:
    pkg = work / f"pkg-T{tasks}"
    shutil.rmtree(pkg, ignore_errors=True)
    shutil.copytree(built, pkg)
    marks: dict[str, tuple[float, float]] = {}  # event -> (wall, this process's CPU time)
    config = UpdateConfig(pkg, data, UpdateOptions(epochs=args.epochs, batch_size=128, device="cpu", int8=False))

    def on_event(event: dict) -> None:
        marks.setdefault(event["event"], (time.perf_counter(), time.process_time()))
        if event["event"] == "exporting":  # time what follows training only
            took.clear()

    with record() as took:
        start, cpu_start = time.perf_counter(), time.process_time()
        update_package(config, on_event=on_event)
        end, cpu_end = time.perf_counter(), time.process_time()
    (checked, cpu_checked), (exporting, cpu_exporting) = marks["checked"], marks["exporting"]
    row = {"tasks": tasks, "before": checked - start, "training": exporting - checked,
           "after": end - exporting, "total": end - start,
           "rest_cpu": (cpu_checked - cpu_start) + (cpu_end - cpu_exporting),
           **{name: took.get(name, 0.0) for name in COLUMNS}}
    row["rest"] = row["before"] + row["after"]
    version = open_package(pkg)
    m = version.manifest
    row["new_bytes"] = sum(f.size for f in m.files if f.name not in {g.name for g in open_package(pkg, version=m.parent).manifest.files})
    row["verified_graphs"] = len(m.verification["graphs"])
    if args.int8_cost:
        exemplars, _ = version.exemplars()
        full = version.path(m.file("full")).read_bytes()
        start = time.perf_counter()
        quantize_full(full, calibration_images(exemplars.images, exemplars.labels))
        row["int8"] = time.perf_counter() - start
    shutil.rmtree(pkg)
    return row


def median_rows(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    out = []
    for t in sorted({int(r["tasks"]) for r in rows}):
        mine = [r for r in rows if r["tasks"] == t]
        out.append({k: statistics.median(r[k] for r in mine) for k in mine[0]} | {"runs": len(mine)})
    return out


def to_markdown(rows: list[dict[str, float]], args: argparse.Namespace, loads: list[str]) -> str:
    first, last = rows[0], rows[-1]
    ratio, cpu_ratio = last["rest"] / first["rest"], last["rest_cpu"] / first["rest_cpu"]
    command = (f".venv/bin/python benchmarks/update_speed.py --tasks {args.tasks} --repeats {args.repeats} "
               f"--epochs {args.epochs} --exemplars {args.exemplars} --new-per-class {args.new_per_class}"
               + ("" if args.int8_cost else " --no-int8-cost") + f" --write {args.write}")
    lines = [
        "## Device update: training vs the rest (export, verification, commit), MEMO ResNet-32, CIFAR-sized",
        "",
        f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- where: {cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads); 1-minute load average at each run: {', '.join(loads)} "
        "(other work on the machine slows every figure; the ratio within one run is what counts)",
        f"- what: `update_package` on a random-weight package of T tasks of 10 classes (branches made to differ), {args.exemplars} exemplars "
        f"at every T, learning the same 10 new classes ({args.new_per_class} random images each), {args.epochs} "
        f"epoch(s), batch 128, CPU, `int8=False` (random weights fail the int8 agreement check, rightly); "
        f"median of {args.repeats} interleaved runs per T, the package rebuilt for each",
        f"- command: `{command}`",
        "",
        "| tasks | total (s) | training (s) | rest (s) | rest, CPU time (s) | before training | export: full graph "
        "| export: new branch graph | export: the rest | verify: PyTorch (trunk, every branch, head) | verify: ORT sessions "
        "| verify: ORT split path | verify: ORT full graph | verify: the rest | commit | gc | new bytes written "
        "| graphs verified | int8 re-made (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{r['total']:.2f}", f"{r['training']:.2f}", f"**{r['rest']:.2f}**", f"{r['rest_cpu']:.2f}",
                 f"{r['before']:.2f}", *(f"{r[name]:.2f}" for name in COLUMNS), f"{r['new_bytes']:,.0f}",
                 f"{r['verified_graphs']:.0f}", f"{r.get('int8', float('nan')):.2f}"]
        lines.append(f"| {r['tasks']:.0f} | " + " | ".join(cells) + " |")
    grows = {r["tasks"]: sum(r[name] for name in SCALES_WITH_T) for r in rows}
    fixed = {r["tasks"]: r["rest"] - grows[r["tasks"]] for r in rows}
    t0, t1 = first["tasks"], last["tasks"]
    met = "met" if ratio <= TARGET else "NOT met"
    lines += [
        "",
        f"Non-training part at T = {t1:.0f} over T = {t0:.0f}: **{ratio:.2f}x** wall time "
        f"(target <= {TARGET}: {met}), {cpu_ratio:.2f}x in this process's CPU time (less disturbed by other work "
        "on the machine).",
        "",
        f"Split by what the work is proportional to: the full graph's export, PyTorch's reference (through every "
        f"branch), the ONNX Runtime sessions of every graph and the two end-to-end runs (split path, full graph) "
        f"grow with T by design: {grows[t0]:.2f} s at T = {t0:.0f}, {grows[t1]:.2f} s at T = {t1:.0f}, "
        f"{(grows[t1] - grows[t0]) / (t1 - t0):.3f} s per task. Everything else "
        f"(checks, reading the data, the new branch's graph and per-graph check, the head, weights, commit, gc): "
        f"{fixed[t0]:.2f} s at T = {t0:.0f}, {fixed[t1]:.2f} s at T = {t1:.0f}, **{fixed[t1] / fixed[t0]:.2f}x**.",
        "",
        "Columns (the phases `memo_edge/utils/phases.py` marks; times exclusive: a phase inside another is counted "
        "once, in its own column): before training "
        "= lock, package check, reading the new data; export = `model_blobs` (the full graph, the new branch's "
        "graph; the rest: head, per-component weights); verify = `verify_package`: PyTorch's reference (trunk, "
        "every branch, head), the ONNX Runtime sessions it opens, the split path end to end (trunk graph and every "
        "branch graph), the full graph end to end; the rest: the per-graph check of "
        "the new graphs, the comparisons; commit = writing the files and the "
        "catalog transaction; gc = garbage collection; int8 re-made = `quantize_full` of the new full graph with "
        "its calibration (not part of the update here).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="2,5,10")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--exemplars", type=int, default=1000, help="exemplar memory (images) at every T")
    parser.add_argument("--new-per-class", type=int, default=50)
    parser.add_argument("--no-int8-cost", dest="int8_cost", action="store_false",
                        help="skip timing quantize_full of the new full graph")
    parser.add_argument("--write", type=Path, help="Markdown file whose section to replace, e.g. docs/benchmarks.md")
    args = parser.parse_args()
    tasks = [int(t) for t in args.tasks.split(",")]
    rows, loads = [], []
    with tempfile.TemporaryDirectory(prefix="memo-update-speed-") as tmp:
        work = Path(tmp)
        data = new_classes(work / "new", args.new_per_class)
        built = {t: work / f"built-T{t}" for t in tasks}
        for t in tasks:
            build(t, built[t], args.exemplars)
        for repeat in range(args.repeats):
            for t in tasks:
                loads.append(load_average())
                row = measure(t, built[t], work, data, args)
                print(f"T={t} run {repeat + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), file=sys.stderr)
                rows.append(row)
    section = to_markdown(median_rows(rows), args, loads)
    print(section)
    if args.write:
        write_section(args.write, "update_speed", section)


if __name__ == "__main__":
    main()
