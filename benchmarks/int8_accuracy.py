"""What int8 costs in accuracy: a trained run exported with ``--int8``, float32 vs int8 on its test split.

For each run directory: ``export_run(..., int8=True)`` of its last task into a temporary package
(the int8 graph calibrated on the task's exemplars, as ``memo-edge export --int8`` does), then on
every test image of the classes seen so far: top-1 accuracy of ``ort-cpu`` with ``precision="fp32"``
and ``"int8"``, their top-1 agreement, and the run's own PyTorch accuracy from results.json.

    .venv/bin/python benchmarks/int8_accuracy.py RUN_DIR [RUN_DIR ...] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime

from memo_edge.export.exporter import ExportConfig, export_run
from memo_edge.export.quantize import CALIBRATION_IMAGES
from memo_edge.runtime.backends import create_backend
from memo_edge.train.run import read_run_header, run_test_split

from _report import cpu_name, write_section  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def measure(run: Path, workdir: Path, batch: int = 256) -> dict[str, object]:
    header = read_run_header(run)
    results = json.loads((run / "results.json").read_text())
    start = time.perf_counter()
    version, _ = export_run(ExportConfig(run, workdir / run.name, int8=True))
    export_s = time.perf_counter() - start
    task = len(version.manifest.task_classes) - 1
    test = run_test_split(header, task)
    fp32 = create_backend("ort-cpu", version, precision="fp32")
    int8 = create_backend("ort-cpu", version, precision="int8")
    a, b = [], []
    for i in range(0, len(test), batch):
        images = test.take(np.arange(i, min(i + batch, len(test))))
        a.append(fp32.logits(images).argmax(1))
        b.append(int8.logits(images).argmax(1))
    top_fp32, top_int8, labels = np.concatenate(a), np.concatenate(b), test.labels
    c = header["config"]
    return {
        "run": f"{c['dataset']} {c['scenario']} ({c.get('classes') or 'all'} classes), {c['backbone']}, "
               f"{c['init_epochs']}/{c['epochs']} epochs",
        "tasks": task + 1, "images": len(labels), "pytorch": results["tasks"][task]["metrics"]["top1"],
        "fp32": 100 * float(np.mean(top_fp32 == labels)), "int8": 100 * float(np.mean(top_int8 == labels)),
        "agreement": 100 * float(np.mean(top_fp32 == top_int8)), "calibration": min(CALIBRATION_IMAGES, version.manifest.budget.exemplars),
        "export_s": export_s,
    }


def to_markdown(rows: list[dict[str, object]], command: str) -> str:
    lines = [
        "## int8 accuracy: the int8 full graph (`export --int8`) vs float32, on trained runs",
        "",
        f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- where: {cpu_name()}, Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}",
        "- what: each run's last task exported with `--int8` (ONNX Runtime static QDQ quantization: int8 weights per "
        "channel, uint8 activations with MinMax ranges calibrated on the exemplars); top-1 on the whole test split "
        "of the classes seen, ort-cpu fp32 vs int8; PyTorch = the run's results.json",
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
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="trained run directories (memo-edge train --out)")
    parser.add_argument("--write", type=Path, help="Markdown file whose section to replace, e.g. docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="memo-int8-accuracy-") as tmp:
        rows = [measure(run, Path(tmp)) for run in args.runs]
    command = ".venv/bin/python benchmarks/int8_accuracy.py " + " ".join(map(str, args.runs))
    section = to_markdown(rows, command + (f" --write {args.write}" if args.write else ""))
    print(section)
    if args.write:
        write_section(args.write, "int8_accuracy", section)


if __name__ == "__main__":
    main()
