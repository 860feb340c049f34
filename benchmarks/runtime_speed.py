"""Inference speed of MEMO ResNet-32 at T = 1, 5, 10 tasks: ONNX Runtime (CPU) vs PyTorch eager.

For each T: a randomly initialised ``MemoNet("resnet32")`` expanded T times by 10 classes (speed
does not depend on the weights), written as a package with ``package_model(..., int8=True)``
(verified as in ``export --int8``). Then, in this one process, on the same random uint8
CIFAR-sized batches:

- ONNX Runtime fp32: ``create_backend("ort-cpu", open_package(pkg), precision="fp32").logits`` (the
  runtime's path: uint8 NHWC in, preprocessing inside the graph, full.onnx);
- ONNX Runtime int8: the same with ``precision="int8"`` (full-int8.onnx, what ``auto`` picks for a
  package exported with ``--int8``); its accuracy is measured by ``benchmarks/int8_accuracy.py``;
- PyTorch eager: ``model.eval()`` under ``torch.inference_mode()``, the same uint8 batch through
  the export's ``Preprocess`` (the same arithmetic), logits back as numpy.

Latency at batch 1 (p50/p95 of the timed calls) and throughput at batch 64 (64 / the median call),
after warm-up calls. The three are timed interleaved: ``--rounds`` rounds, each a block of calls of every
one in turn (order reversed every other round), so a load that comes and goes on a shared machine
hits them alike; the 1-minute load average is recorded. Then the peak RSS of a torch-free predicting process, per precision: a fresh
Python that imports only ``memo_edge.runtime``, opens the T=10 package and predicts one batch of 64 (its own
peak: VmHWM, since ``ru_maxrss`` would carry over this torch process's peak through fork/exec).
Thread counts are left at their defaults and reported.

    .venv/bin/python benchmarks/runtime_speed.py [--iterations 50] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from memo_edge.export.graphs import Preprocess
from memo_edge.runtime.backends import create_backend
from memo_edge.runtime.package import open_package

from _package import CIFAR, random_package  # noqa: E402
from _report import cpu_name, load_average, timings, write_section  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

TARGETS = {"speedup_b1": 3.0, "speedup_b64": 1.5, "rss_mb": 200.0}  # at T = 10, from the runtime issue
MS_PER_IMAGE = {"ort": 2.2, "int8": 0.8}  # batch 64 at T = 10, the per-component weights' targets
ORT_DEFAULTS = "ORT_ENABLE_ALL, intra-op threads at ONNX Runtime's default, spinning on for the full graph"

RSS_CODE = """
import json, sys
import numpy as np
from memo_edge.runtime.backends import create_backend
from memo_edge.runtime.bench import peak_rss_mb
from memo_edge.runtime.package import open_package
backend = create_backend("ort-cpu", open_package(sys.argv[1]), precision=sys.argv[2])
logits = backend.logits(np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8))
assert logits.shape[0] == 64 and "torch" not in sys.modules, "torch was imported"
print(json.dumps({"peak_rss_mb": peak_rss_mb()}))
"""


def measure(tasks: int, workdir: Path, args: argparse.Namespace) -> dict[str, float]:
    model, version = random_package(workdir / f"pkg-T{tasks}", tasks, int8=True)
    package = open_package(version.root)
    ort = create_backend("ort-cpu", package, precision="fp32").logits
    ort_int8 = create_backend("ort-cpu", package, precision="int8").logits
    preprocess = Preprocess(CIFAR.mean, CIFAR.std)

    def eager(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(preprocess(torch.from_numpy(images))).logits.numpy()

    rng = np.random.default_rng(1)
    one = rng.integers(0, 256, (1, *CIFAR.shape), dtype=np.uint8)
    many = rng.integers(0, 256, (64, *CIFAR.shape), dtype=np.uint8)
    assert np.allclose(ort(many), eager(many), atol=1e-3), "ORT and eager disagree"
    row: dict[str, float] = {"tasks": tasks}
    fns = [("ort", ort), ("int8", ort_int8), ("eager", eager)]
    b1: dict[str, list[np.ndarray]] = {name: [] for name, _ in fns}
    b64: dict[str, list[np.ndarray]] = {name: [] for name, _ in fns}
    for r in range(args.rounds):  # interleaved: A B C C B A A B C ...
        for name, fn in (fns if r % 2 == 0 else fns[::-1]):
            b1[name].append(timings(fn, one, max(1, args.iterations // args.rounds), args.warmup) * 1e3)
            b64[name].append(timings(fn, many, max(1, args.iterations_64 // args.rounds), args.warmup))
    for name, _ in fns:
        one_ms, many_s = np.concatenate(b1[name]), np.concatenate(b64[name])
        row |= {f"{name}_b1_p50": float(np.percentile(one_ms, 50)), f"{name}_b1_p95": float(np.percentile(one_ms, 95)),
                f"{name}_b64_ips": 64 / float(np.median(many_s))}
    return row


def predict_rss(package: Path, precision: str) -> float:
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", RSS_CODE, str(package), precision], capture_output=True, text=True,
                         env=env, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def physical_cores() -> int:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return os.cpu_count() or 1
    cores, phys = set(), "0"
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            phys = value.strip()
        elif key.strip() == "core id":
            cores.add((phys, value.strip()))
    return len(cores) or os.cpu_count() or 1


def verdict(value: float, target: float, *, below: bool = False) -> str:
    met = value < target if below else value >= target
    return f"{'met' if met else 'NOT met'} ({value:.2f} vs {'<' if below else '>='} {target:g})"


def to_markdown(rows: list[dict[str, float]], rss: dict[str, float], args: argparse.Namespace) -> str:
    last = rows[-1]
    lines = [
        "## Inference speed: ONNX Runtime (CPU, fp32 and int8) vs PyTorch eager, MEMO ResNet-32, CIFAR-sized images",
        "",
        f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- where: {cpu_name()}, {os.cpu_count()} logical CPUs ({physical_cores()} physical cores), Python "
        f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} intra-op threads, its default), "
        f"onnxruntime {onnxruntime.__version__} (intra-op threads left at its default: one per physical core)",
        f"- what: logits of random uint8 32x32x3 images, preprocessing included on all sides; ORT through "
        f"`create_backend(\"ort-cpu\", package, precision=...).logits` (full graph: fp32 = full.onnx, int8 = "
        f"full-int8.onnx from `export --int8`), eager = `MemoNet` (float32) in eval mode under "
        f"`torch.inference_mode()`; random weights (speed only; int8 accuracy: the int8 section below); "
        f"{args.rounds} interleaved rounds, each of {args.warmup} warm-up calls then {args.iterations // args.rounds} "
        f"timed calls at batch 1 and {args.iterations_64 // args.rounds} at batch 64 of each; batch-64 images/s = 64 / "
        f"the median call; ORT sessions with ort-cpu's defaults ({ORT_DEFAULTS}); 1-minute load average at the start "
        f"of each T: {', '.join(args.loads)}, at the end: {load_average()}",
        f"- command: `.venv/bin/python benchmarks/runtime_speed.py --iterations {args.iterations} "
        f"--iterations-64 {args.iterations_64} --rounds {args.rounds}" + (f" --write {args.write}`" if args.write else "`"),
        "",
        "| tasks | eager b1 p50 / p95 (ms) | ORT fp32 b1 p50 / p95 (ms) | ORT int8 b1 p50 / p95 (ms) | speed-up b1 fp32 / int8 "
        "| eager b64 (img/s) | ORT fp32 b64 (img/s) | ORT int8 b64 (img/s) | ORT b64 fp32 / int8 (ms/img) "
        "| speed-up b64 fp32 / int8 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b1 = [r["eager_b1_p50"] / r[f"{k}_b1_p50"] for k in ("ort", "int8")]
        b64 = [r[f"{k}_b64_ips"] / r["eager_b64_ips"] for k in ("ort", "int8")]
        lines.append(
            f"| {r['tasks']} | {r['eager_b1_p50']:.2f} / {r['eager_b1_p95']:.2f} | {r['ort_b1_p50']:.2f} / "
            f"{r['ort_b1_p95']:.2f} | {r['int8_b1_p50']:.2f} / {r['int8_b1_p95']:.2f} | {b1[0]:.2f}x / {b1[1]:.2f}x | "
            f"{r['eager_b64_ips']:.0f} | {r['ort_b64_ips']:.0f} | {r['int8_b64_ips']:.0f} | "
            f"{1e3 / r['ort_b64_ips']:.2f} / {1e3 / r['int8_b64_ips']:.2f} | {b64[0]:.2f}x / {b64[1]:.2f}x |")
    lines += [
        "",
        f"Peak RSS of a torch-free process that opens the T={last['tasks']} package and predicts a batch of 64 "
        f"with ort-cpu: **{rss['fp32']:.0f} MiB** (fp32), **{rss['int8']:.0f} MiB** (int8).",
        "",
        f"Targets at T = {last['tasks']} (runtime issue):",
    ]
    for key, label in (("ort", "fp32"), ("int8", "int8")):
        lines.append(
            f"- ORT {label}: >= 3x eager at batch 1: {verdict(last['eager_b1_p50'] / last[f'{key}_b1_p50'], TARGETS['speedup_b1'])}; "
            f">= 1.5x at batch 64: {verdict(last[f'{key}_b64_ips'] / last['eager_b64_ips'], TARGETS['speedup_b64'])}; "
            f"predict process < 200 MiB: {verdict(rss[label], TARGETS['rss_mb'], below=True)}; "
            f"batch 64 <= {MS_PER_IMAGE[key]} ms/img (issue 13): "
            f"{verdict(1e3 / last[f'{key}_b64_ips'], MS_PER_IMAGE[key] + 1e-9, below=True)}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="1,5,10")
    parser.add_argument("--iterations", type=int, default=100, help="timed calls at batch 1")
    parser.add_argument("--iterations-64", type=int, default=20, help="timed calls at batch 64")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before each block")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over eager, ORT fp32 and ORT int8")
    parser.add_argument("--write", type=Path, help="Markdown file whose section to replace, e.g. docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="memo-runtime-speed-") as tmp:
        args.loads, rows = [], []
        for t in args.tasks.split(","):
            args.loads.append(load_average())
            rows.append(measure(int(t), Path(tmp), args))
        last = Path(tmp) / f"pkg-T{rows[-1]['tasks']}"
        rss = {precision: predict_rss(last, precision) for precision in ("fp32", "int8")}
    section = to_markdown(rows, rss, args)
    print(section)
    if args.write:
        write_section(args.write, "runtime_speed", section)


if __name__ == "__main__":
    main()
