"""What int8 costs in accuracy: a trained run exported with ``--int8``, float32 vs int8 on its test split.

For each run directory: ``export_run(..., int8=True)`` of its last task into a temporary package
(the int8 graph calibrated on the task's exemplars, as ``memo-edge export --int8`` does), then on
every test image of the classes seen so far: top-1 accuracy of ``ort-cpu`` with ``precision="fp32"``
and ``"int8"``, their top-1 agreement, and the run's own PyTorch accuracy from results.json.
With ``--sweep 64,512,...``: the same figures for int8 graphs calibrated on that many exemplars
(``quantize_full`` of the package's float graph; export itself uses ``CALIBRATION_IMAGES``).
With ``--variants previous,qoperator,...``: the same figures for int8 graphs made with other
``Int8Options`` (``VARIANTS`` below) from the same float graph and the same calibration images as export.

    .venv/bin/python benchmarks/int8_accuracy.py RUN_DIR [RUN_DIR ...] [--sweep 64,512] [--variants all]
        [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime

from memo_edge.export.exporter import ExportConfig, export_run
from memo_edge.export.quantize import CALIBRATION_IMAGES, DEFAULT_INT8, Int8Options, calibration_images, quantize_full
from memo_edge.data.sources import ImageSource
from memo_edge.runtime.backends import create_backend
from memo_edge.train.rundir import read_run_header, run_test_split

from _report import cpu_name, write_section  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


VARIANTS = {  # the levers of docs/benchmarks.md's "ONNX Runtime CPU levers" section, for accuracy
    "previous": Int8Options(shortcut_conv=False, reduce_range=False),
    "qoperator": Int8Options(format="qoperator"),
    "per-tensor": Int8Options(per_channel=False),
    "full-range": Int8Options(reduce_range=False),
    "entropy": Int8Options(calibration="entropy"),
    "percentile": Int8Options(calibration="percentile"),
}


def top1(fn: Callable[[np.ndarray], np.ndarray], test: ImageSource, batch: int = 256) -> np.ndarray:
    return np.concatenate([fn(test.take(np.arange(i, min(i + batch, len(test))))).argmax(1)
                           for i in range(0, len(test), batch)])


def measure(run: Path, workdir: Path, sweep: list[int], variants: list[str]) -> dict[str, object]:
    header = read_run_header(run)
    results = json.loads((run / "results.json").read_text())
    start = time.perf_counter()
    version, _ = export_run(ExportConfig(run, workdir / run.name, int8=True))
    export_s = time.perf_counter() - start
    task = len(version.manifest.task_classes) - 1
    test = run_test_split(header.config, header.scenario, task)
    top_fp32 = top1(create_backend("ort-cpu", version, precision="fp32").logits, test)
    top_int8 = top1(create_backend("ort-cpu", version, precision="int8").logits, test)
    labels = test.labels
    exemplars, _ = version.exemplars()
    full = version.path(version.manifest.file("full")).read_bytes()
    swept = {}
    for count in sweep:
        session = onnxruntime.InferenceSession(
            quantize_full(full, calibration_images(exemplars.images, exemplars.labels, count)),
            providers=["CPUExecutionProvider"])
        top = top1(lambda x: session.run(None, {"image": x})[0], test)
        swept[min(count, len(exemplars))] = (100 * float(np.mean(top == labels)), 100 * float(np.mean(top == top_fp32)))
    made = {}
    calibration = calibration_images(exemplars.images, exemplars.labels)
    for name in variants:
        start = time.perf_counter()
        data = quantize_full(full, calibration, options=VARIANTS[name])
        seconds = time.perf_counter() - start
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        top = top1(lambda x: session.run(None, {"image": x})[0], test)
        made[name] = (100 * float(np.mean(top == labels)), 100 * float(np.mean(top == top_fp32)), seconds)
    c = header.config
    return {
        "run": f"{c.dataset} {c.scenario} ({c.classes or 'all'} classes), {c.backbone}, "
               f"{c.init_epochs}/{c.epochs} epochs",
        "tasks": task + 1, "images": len(labels), "pytorch": results["tasks"][task]["metrics"]["top1"],
        "fp32": 100 * float(np.mean(top_fp32 == labels)), "int8": 100 * float(np.mean(top_int8 == labels)),
        "agreement": 100 * float(np.mean(top_fp32 == top_int8)),
        "calibration": min(CALIBRATION_IMAGES, version.manifest.budget.exemplars),
        "export_s": export_s, "sweep": swept, "variants": made,
    }


def to_markdown(rows: list[dict[str, object]], command: str) -> str:
    lines = [
        "## int8 accuracy: the int8 full graph (`export --int8`) vs float32, on trained runs",
        "",
        f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- where: {cpu_name()}, Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}",
        f"- what: each run's last task exported with `--int8` (ONNX Runtime static quantization, the default "
        f"`Int8Options`: {DEFAULT_INT8.describe()}; uint8 activations calibrated on the exemplars); top-1 on the whole "
        "test split of the classes seen, ort-cpu fp32 vs int8; PyTorch = the run's results.json",
        f"- command: `{command}`",
        "",
        "| run | tasks | test images | PyTorch top-1 | ORT fp32 top-1 | ORT int8 top-1 | int8 - fp32 | top-1 agreement "
        "| calibration images | export (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['run']} | {r['tasks']} | {r['images']} | {r['pytorch']:.2f}% | {r['fp32']:.2f}% | "
                     f"{r['int8']:.2f}% | {r['int8'] - r['fp32']:+.2f} | {r['agreement']:.2f}% | {r['calibration']} | "
                     f"{r['export_s']:.0f} |")
    swept = [(r["run"], n, figures) for r in rows for n, figures in r["sweep"].items()]
    if swept:
        lines += ["", "Calibration set size (`--sweep`): int8 graphs of the same float graph calibrated on N exemplars.", "",
                  "| run | calibration images | int8 top-1 | top-1 agreement with fp32 |", "|---|---|---|---|"]
        lines += [f"| {run} | {n} | {acc:.2f}% | {agree:.2f}% |" for run, n, (acc, agree) in swept]
    made = [(r["run"], name, figures) for r in rows for name, figures in r["variants"].items()]
    if made:
        lines += ["", "Other int8 options (`--variants`): the same float graph and calibration images as export, "
                  "quantized with other `Int8Options`; the first row is export's default.", "",
                  "| run | int8 options | int8 top-1 | int8 - fp32 | top-1 agreement with fp32 | quantization (s) |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['run']} | default: {DEFAULT_INT8.describe()} | {r['int8']:.2f}% | "
                         f"{r['int8'] - r['fp32']:+.2f} | {r['agreement']:.2f}% | - |")
            lines += [f"| {r['run']} | {name}: {VARIANTS[name].describe()} | {acc:.2f}% | {acc - r['fp32']:+.2f} | "
                      f"{agree:.2f}% | {seconds:.1f} |" for name, (acc, agree, seconds) in r["variants"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="trained run directories (memo-edge train --out)")
    parser.add_argument("--sweep", default="", help="comma-separated calibration set sizes to compare, e.g. 64,512,2000")
    parser.add_argument("--variants", default="", help=f"comma-separated Int8Options to compare, or all: {', '.join(VARIANTS)}")
    parser.add_argument("--write", type=Path, help="Markdown file whose section to replace, e.g. docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="memo-int8-accuracy-") as tmp:
        variants = list(VARIANTS) if args.variants == "all" else [v for v in args.variants.split(",") if v]
        unknown = sorted(set(variants) - set(VARIANTS))
        if unknown:
            parser.error(f"unknown variants {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        rows = [measure(run, Path(tmp), [int(n) for n in args.sweep.split(",") if n], variants) for run in args.runs]
    command = ".venv/bin/python benchmarks/int8_accuracy.py " + " ".join(map(str, args.runs))
    command += f" --sweep {args.sweep}" if args.sweep else ""
    command += f" --variants {args.variants}" if args.variants else ""
    section = to_markdown(rows, command + (f" --write {args.write}" if args.write else ""))
    print(section)
    if args.write:
        write_section(args.write, "int8_accuracy", section)


if __name__ == "__main__":
    main()
