"""What autocast changes when a trained model herds, builds its class means and is evaluated.

The trainer runs the feature extraction of herding, of the NME class means and of evaluation under the
run's ``--precision`` (train/features.extract: autocast, then float32 arrays). This measures, on one
trained run's last checkpoint, what each lower precision changes against float32 on the same weights:

- features: ||f_p - f_fp32|| / ||f_fp32|| over the test images (relative, all rows at once);
- herding: for every class of the last task, the exemplars herded from its training images with the
  run's per-class count, under each precision; the overlap |S_p & S_fp32| / m (mean and worst class);
- class means: the cosine between each class's NME prototype under p and under fp32 (worst class);
- evaluation: CNN and NME top-1 on the test images of every seen class, p minus fp32 in points, and the
  share of test images whose CNN prediction changes;
- time: one extraction of the test images (the forward passes plus the copies back).

    python3 benchmarks/autocast_inference.py --run RUN_DIR --device cuda --precisions bf16,fp16 \\
        [--json OUT.json] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memo_edge.data.scenario import remap, task_subset
from memo_edge.data.sources import ArraySource
from memo_edge.memory.herding import herding_order, l2_normalize
from memo_edge.train.augment import TestTransform
from memo_edge.train.checkpoint import load_checkpoint, verified_states
from memo_edge.train.features import class_means, evaluate, extract
from memo_edge.train.precision import resolve_precision
from memo_edge.train.rundir import load_run_data, read_run_header

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import device_name, write_section  # noqa: E402


def timed_extract(model, source, transform, device: torch.device, precision: str) -> tuple[np.ndarray, np.ndarray, float]:
    extract(model, source, transform, device, precision=precision, batch_size=256)  # warm-up (cuDNN's first calls)
    start = time.perf_counter()
    feats, logits = extract(model, source, transform, device, precision=precision)
    return feats, logits, time.perf_counter() - start


def herded(features: np.ndarray, labels: np.ndarray, classes: list[int], m: int) -> dict[int, set[int]]:
    """Each class's herding choice of ``m`` rows (as row indices into ``features``)."""
    out = {}
    for c in classes:
        rows = np.flatnonzero(labels == c)
        out[c] = set(rows[herding_order(features[rows], m)].tolist())
    return out


def measure(run: Path, device: torch.device, precisions: list[str]) -> dict[str, Any]:
    header = read_run_header(run)
    states = verified_states(run)
    if not states:
        raise SystemExit(f"{run} has no finished task")
    task = len(states) - 1
    checkpoint = load_checkpoint(run, task, state=states[-1])
    model, exemplars = checkpoint.model.to(device).eval(), checkpoint.exemplars
    scenario = header.scenario
    dataset, _ = load_run_data(header.config)
    new_images = task_subset(remap(dataset.train, scenario), scenario, task)
    test = task_subset(remap(dataset.test, scenario), scenario, task, seen=True)
    transform = TestTransform(header.mean, header.std)
    m = int(states[-1]["record"]["per_class"])
    new_classes = sorted(set(new_images.labels.tolist()))
    boundaries = scenario.boundaries()[: task + 1]

    per_precision: dict[str, dict[str, Any]] = {}
    for precision in ["fp32", *precisions]:
        precision = resolve_precision(precision, device)
        feats, logits, seconds = timed_extract(model, test, transform, device, precision)
        new_feats, _ = extract(model, new_images, transform, device, precision=precision)
        ex_feats, _ = extract(model, ArraySource(exemplars.images, exemplars.labels), transform, device,
                              precision=precision)
        means = class_means(ex_feats, exemplars.labels, model.num_classes)
        metrics = evaluate(model, test, means, task=task, boundaries=boundaries, transform=transform, device=device,
                           precision=precision)
        per_precision[precision] = {"feats": feats, "pred": logits.argmax(1), "means": means, "seconds": seconds,
                                    "herded": herded(new_feats, new_images.labels, new_classes, m),
                                    "top1": metrics.top1, "nme_top1": metrics.nme_top1}
    ref = per_precision["fp32"]
    rows = []
    for precision, got in per_precision.items():
        if precision == "fp32":
            continue
        overlaps = [len(got["herded"][c] & ref["herded"][c]) / max(len(ref["herded"][c]), 1) for c in new_classes]
        cosines = np.einsum("ij,ij->i", l2_normalize(got["means"]), l2_normalize(ref["means"]))
        rows.append({
            "precision": precision,
            "feature_rel_diff": float(np.linalg.norm(got["feats"] - ref["feats"]) / np.linalg.norm(ref["feats"])),
            "herding_overlap": float(np.mean(overlaps)), "herding_overlap_min": float(np.min(overlaps)),
            "mean_cosine_min": float(cosines.min()),
            "cnn_delta_pp": got["top1"] - ref["top1"], "nme_delta_pp": got["nme_top1"] - ref["nme_top1"],
            "predictions_changed": float(np.mean(got["pred"] != ref["pred"])),
            "extract_s": got["seconds"], "extract_fp32_s": ref["seconds"],
        })
    return {"run": str(run), "task": task, "per_class": m, "test_images": len(test), "new_classes": len(new_classes),
            "fp32": {"top1": ref["top1"], "nme_top1": ref["nme_top1"], "extract_s": ref["seconds"]}, "rows": rows}


def to_markdown(report: dict[str, Any], args: argparse.Namespace, device: torch.device) -> str:
    lines = [
        f"## What autocast changes in herding, class means and evaluation ({device.type})",
        "",
        f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- where: {device.type} ({device_name(device)}), Python {platform.python_version()}, torch {torch.__version__}",
        f"- what: the last checkpoint (task {report['task']}) of `{report['run']}`, the same weights extracted in fp32 "
        f"and under autocast: {report['test_images']} test images, herding of {report['new_classes']} new classes at "
        f"{report['per_class']} exemplars each; fp32: CNN top-1 {report['fp32']['top1']:.2f} %, NME top-1 "
        f"{report['fp32']['nme_top1']:.2f} %",
        f"- command: `python3 benchmarks/autocast_inference.py --run RUN --device {device.type} --precisions "
        f"{args.precisions}{f' --write {args.write}' if args.write else ''}`",
        "",
        "| precision | feature rel. diff | herding overlap (mean / worst class) | worst class-mean cosine | CNN top-1 (pp) "
        "| NME top-1 (pp) | CNN predictions changed | test extraction (s) vs fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['precision']} | {r['feature_rel_diff']:.2e} | {r['herding_overlap']:.3f} / "
                     f"{r['herding_overlap_min']:.3f} | {r['mean_cosine_min']:.6f} | {r['cnn_delta_pp']:+.2f} | "
                     f"{r['nme_delta_pp']:+.2f} | {100 * r['predictions_changed']:.2f} % | "
                     f"{r['extract_s']:.3f} vs {r['extract_fp32_s']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a finished training run directory")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", default="bf16", help="comma-separated: bf16, fp16 (GPUs)")
    parser.add_argument("--json", type=Path, help="the figures as JSON")
    parser.add_argument("--write", type=Path, help="Markdown file whose section to replace, e.g. docs/benchmarks.md")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    report = measure(args.run, device, args.precisions.split(","))
    section = to_markdown(report, args, device)
    print(section)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.write:
        write_section(args.write, f"autocast_inference_{device.type}", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
