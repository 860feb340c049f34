"""Accuracy guard of mixed precision: the same reduced real CIFAR-100 run in fp32 and in bf16, same seed.

Trains MEMO with `memo_edge.train.run.train` (what `memo-edge train` runs) once per precision on a
reduced protocol: the first `--classes` classes of the reference class order (seed 1993), scenario
`--scenario` (B0Inc10 on 20 classes: 2 tasks), ResNet-32, a short step schedule, 2,000 exemplars.
Everything but `--precision` is identical (each with the trainer's defaults: NCHW and the plain
frozen-branch path on the CPU; `--stack-frozen` adds the stacked path to both). Reports average incremental accuracy (CNN top-1, the
paper's metric), last accuracy, NME, wall time, and whether bf16 is within `--tolerance` pp of fp32.

Data: the CIFAR-100 copy in the npz format (`train-*.npz`, `test-*.npz`), by default the shared
reference copy (../shared/datasets/cifar100 from the repository, or /work/shared/datasets/cifar100).

    .venv/bin/python benchmarks/bf16_accuracy.py [--data DIR] [--classes 20] [--init-epochs 4 --epochs 3] \\
        [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from memo_edge.train.config import TrainConfig
from memo_edge.train.run import train

from _report import cpu_name, load_average, write_section  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent


def default_data() -> Path:
    for candidate in (ROOT.parent / "shared" / "datasets" / "cifar100", Path("/work/shared/datasets/cifar100")):
        if candidate.is_dir():
            return candidate
    raise SystemExit("no CIFAR-100 npz copy found: pass --data DIR (train-*.npz, test-*.npz)")


def run(args: argparse.Namespace, precision: str, out: Path) -> dict:
    config = TrainConfig(out=str(out / precision), dataset=f"npz:{args.data}", scenario=args.scenario,
                         classes=args.classes, seed=args.seed, backbone=args.backbone, init_epochs=args.init_epochs,
                         epochs=args.epochs, batch_size=args.batch_size, memory=str(args.memory), device="cpu",
                         precision=precision, stack_frozen=args.stack_frozen)
    start = time.perf_counter()
    results = train(config, force=True)
    s = results["summary"]
    tasks = results["tasks"]
    nme = [t["metrics"]["nme_top1"] for t in tasks]
    return {"precision": precision, "avg": s["average_incremental_accuracy"], "last": s["last_accuracy"],
            "avg_nme": sum(nme) / len(nme), "last_nme": nme[-1], "curve": [t["metrics"]["top1"] for t in tasks],
            "wall_s": time.perf_counter() - start, "img_s": [t["train_images_per_s"] for t in tasks],
            "stack_frozen": results["config"]["stack_frozen"]}


def to_markdown(rows: list[dict], args: argparse.Namespace, load_before: str) -> str:
    fp32, bf16 = rows
    gap = bf16["avg"] - fp32["avg"]
    verdict = "met" if abs(gap) <= args.tolerance else "NOT met"
    lines = [
        "## Mixed precision accuracy guard: bf16 vs fp32 on reduced CIFAR-100",
        "",
        f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- where: cpu ({cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads), "
        f"Python {platform.python_version()}, torch {torch.__version__}; 1-min load average {load_before} before, "
        f"{load_average()} after",
        f"- protocol: real CIFAR-100 (npz copy), first {args.classes} classes of the seed-1993 order, {args.scenario}, "
        f"{args.backbone}, {args.init_epochs} epochs for task 0 and {args.epochs} after (step schedule scaled), batch "
        f"{args.batch_size}, {args.memory} exemplars, seed {args.seed}; the two runs differ only in `--precision`",
        f"- command: `.venv/bin/python benchmarks/bf16_accuracy.py --classes {args.classes} --scenario {args.scenario} "
        f"--init-epochs {args.init_epochs} --epochs {args.epochs}{' --stack-frozen' if args.stack_frozen else ''}"
        f"{f' --write {args.write}' if args.write else ''}`",
        f"- target: bf16 average incremental accuracy within {args.tolerance} pp of fp32: **{verdict}** "
        f"(difference {gap:+.2f} pp)",
        "",
        "| precision | frozen branches | avg incremental top-1 (%) | last top-1 (%) | avg NME (%) | top-1 per task (%) "
        "| train images/s per task | wall (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        stacked = "stacked" if r["stack_frozen"] else "plain"
        lines.append(f"| {r['precision']} | {stacked} | {r['avg']:.2f} | {r['last']:.2f} | {r['avg_nme']:.2f} | "
                     f"{', '.join(f'{a:.1f}' for a in r['curve'])} | {', '.join(f'{v:.0f}' for v in r['img_s'])} | "
                     f"{r['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="CIFAR-100 npz directory [default: the shared reference copy]")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--scenario", default="B0Inc10")
    parser.add_argument("--backbone", default="resnet32")
    parser.add_argument("--init-epochs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--memory", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1993)
    parser.add_argument("--stack-frozen", action="store_true", help="Both runs with the stacked frozen branches")
    parser.add_argument("--tolerance", type=float, default=0.5, help="pp of average incremental accuracy")
    parser.add_argument("--out", type=Path, help="Keep the two run directories here [default: a temporary one]")
    parser.add_argument("--write", type=Path, help="Markdown file whose section to replace, e.g. docs/benchmarks.md")
    args = parser.parse_args()
    args.data = args.data or default_data()
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        rows = []
        for precision in ("fp32", "bf16"):
            rows.append(run(args, precision, out))
            r = rows[-1]
            print(f"{precision}: average {r['avg']:.2f}%  last {r['last']:.2f}%  ({r['wall_s']:.0f} s)", flush=True)
    section = to_markdown(rows, args, load_before)
    print(section)
    if args.write:
        write_section(args.write, "bf16_accuracy", section)


if __name__ == "__main__":
    main()
