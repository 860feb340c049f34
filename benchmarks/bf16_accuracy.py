"""Accuracy guard of mixed precision: the same reduced real CIFAR-100 run in fp32 and in bf16 (and fp16 on a
GPU), same seed.

Trains MEMO with `memo_edge.train.run.train` (what `memo-edge train` runs) once per precision on a
reduced protocol: the first `--classes` classes of the reference class order (seed 1993), scenario
`--scenario` (B0Inc10 on 20 classes: 2 tasks), ResNet-32, a short step schedule, 2,000 exemplars.
Everything but `--precision` is identical (each with the trainer's defaults for its device; `--stack-frozen`
adds the stacked path to every run). Reports average incremental accuracy (CNN top-1, the paper's metric),
last accuracy, NME, wall time, and whether each lower precision is within `--tolerance` pp of fp32.

Data: the CIFAR-100 copy in the npz format (`train-*.npz`, `test-*.npz`), by default the shared
reference copy (../shared/datasets/cifar100 from the repository, or /work/shared/datasets/cifar100).
`--subset DIR` takes a class subset staged by benchmarks/stage_gpu_data.py instead (the GPU machine's
`.gpu-data/cifar100-20`): the same run, read with `--no-shuffle` (its classes are in the seeded order already).

    .venv/bin/python benchmarks/bf16_accuracy.py [--data DIR] [--classes 20] [--init-epochs 4 --epochs 3] \\
        [--write docs/benchmarks.md]
    python3 benchmarks/bf16_accuracy.py --device cuda --precisions fp32,bf16,fp16 --subset .gpu-data/cifar100-20 \\
        --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import tempfile
import time
from pathlib import Path

import torch

from memo_edge.train.config import TrainConfig
from memo_edge.train.run import train

from _report import device_name, load_average, write_section  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent


def default_data() -> Path:
    for candidate in (ROOT.parent / "shared" / "datasets" / "cifar100", Path("/work/shared/datasets/cifar100")):
        if candidate.is_dir():
            return candidate
    raise SystemExit("no CIFAR-100 npz copy found: pass --data DIR (train-*.npz, test-*.npz)")


def run(args: argparse.Namespace, precision: str, out: Path) -> dict:
    data = dict(dataset=f"npz:{args.subset}", shuffle=False) if args.subset else dict(
        dataset=f"npz:{args.data}", classes=args.classes)
    config = TrainConfig(out=str(out / precision), scenario=args.scenario, seed=args.seed, backbone=args.backbone,
                         init_epochs=args.init_epochs, epochs=args.epochs, batch_size=args.batch_size,
                         memory=str(args.memory), device=args.device, precision=precision,
                         stack_frozen=args.stack_frozen, **data)
    start = time.perf_counter()
    results = train(config, force=True)
    s = results["summary"]
    tasks = results["tasks"]
    nme = [t["metrics"]["nme_top1"] for t in tasks]
    return {"precision": precision, "avg": s["average_incremental_accuracy"], "last": s["last_accuracy"],
            "avg_nme": sum(nme) / len(nme), "last_nme": nme[-1], "curve": [t["metrics"]["top1"] for t in tasks],
            "wall_s": time.perf_counter() - start, "img_s": [t["train_images_per_s"] for t in tasks],
            "stack_frozen": results["config"]["stack_frozen"], "numerics": results.get("numerics")}


def section_name(device: torch.device) -> str:
    return "bf16_accuracy" if device.type == "cpu" else f"precision_accuracy_{device.type}"


def to_markdown(rows: list[dict], args: argparse.Namespace, load_before: str) -> str:
    fp32 = rows[0]
    verdicts = []
    for r in rows[1:]:
        gap = r["avg"] - fp32["avg"]
        verdicts.append(f"{r['precision']} {'met' if abs(gap) <= args.tolerance else 'NOT met'} ({gap:+.2f} pp)")
    device = torch.device(args.device)
    data = (f"the class subset staged in `{args.subset}` (benchmarks/stage_gpu_data.py: the first classes of the "
            "seed-1993 order, read with --no-shuffle)" if args.subset else
            f"real CIFAR-100 (npz copy), first {args.classes} classes of the seed-1993 order")
    lines = [
        f"## Mixed precision accuracy guard: {', '.join(r['precision'] for r in rows[1:])} vs fp32 on reduced "
        f"CIFAR-100 ({device.type})",
        "",
        f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- where: {device.type} ({device_name(device)}), Python {platform.python_version()}, torch {torch.__version__}; "
        f"1-min load average {load_before} before, {load_average()} after",
        f"- protocol: {data}, {args.scenario}, {args.backbone}, {args.init_epochs} epochs for task 0 and {args.epochs} "
        f"after (step schedule scaled), batch {args.batch_size}, {args.memory} exemplars, seed {args.seed}; the runs "
        "differ only in `--precision` (fp32 is float32: TF32 off, results.json numerics)",
        f"- command: `{'.venv/bin/python' if device.type == 'cpu' else 'python3'} benchmarks/bf16_accuracy.py "
        f"--device {device.type} --precisions {args.precisions} "
        + (f"--subset {args.subset} " if args.subset else f"--classes {args.classes} ")
        + f"--scenario {args.scenario} --init-epochs {args.init_epochs} --epochs {args.epochs}"
        + (f" --backbone {args.backbone}" if args.backbone != "resnet32" else "")
        + (f" --memory {args.memory}" if args.memory != 2000 else "")
        + (f" --batch-size {args.batch_size}" if args.batch_size != 128 else "")
        + f"{' --stack-frozen' if args.stack_frozen else ''}{f' --write {args.write}' if args.write else ''}`",
        f"- target: average incremental accuracy within {args.tolerance} pp of fp32: **{'; '.join(verdicts)}**",
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
    parser.add_argument("--subset", type=Path, help="a class subset staged by stage_gpu_data.py, instead of --data")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated, fp32 first (fp16: GPUs only)")
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
    precisions = args.precisions.split(",")
    if precisions[0] != "fp32" or len(precisions) < 2:
        raise SystemExit("--precisions: fp32 first, then at least one to compare with it")
    if not args.subset:
        args.data = args.data or default_data()
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        rows = []
        for precision in precisions:
            rows.append(run(args, precision, out))
            r = rows[-1]
            print(f"{precision}: average {r['avg']:.2f}%  last {r['last']:.2f}%  ({r['wall_s']:.0f} s)", flush=True)
    section = to_markdown(rows, args, load_before)
    print(section)
    if args.write:
        write_section(args.write, section_name(torch.device(args.device)), section)


if __name__ == "__main__":
    main()
