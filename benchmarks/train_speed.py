"""Training throughput of MEMO ResNet-32 at T = 1, 5, 10 tasks (images per second).

Times the real training step (`memo_edge.train.task.train_step`) on batches of random CIFAR-sized
uint8 images, augmented as in training, with the parts frozen as in a B0 run (old branches frozen,
trunk trained). Warm-up steps first, then repeated timed steps; reports median and p95 per step.

    .venv/bin/python benchmarks/train_speed.py [--device cpu] [--steps 20] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from memo_edge.model import MemoNet
from memo_edge.train.augment import CifarAugment
from memo_edge.train.recipe import build_optimizer, paper_recipe
from memo_edge.train.task import train_step

from _report import cpu_name, write_section  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


def measure(tasks: int, *, batch: int, steps: int, warmup: int, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    model = MemoNet("resnet32")
    for _ in range(tasks):
        model.expand(10)
    model.to(device)
    model.freeze_old_branches()
    model.train()
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], paper_recipe(min(tasks - 1, 1)))
    augment, gen = CifarAugment(CIFAR_MEAN, CIFAR_STD), torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 32, 32, 3), dtype=torch.uint8, device=device)
    labels = torch.randint(0, model.num_classes, (batch,), device=device)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        train_step(model, optimizer, augment(images, gen), labels, model.known_classes)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    p95 = sorted(times)[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return {"tasks": tasks, "median_s": median, "p95_s": p95, "images_per_s": batch / median}


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def to_markdown(rows: list[dict[str, float]], args: argparse.Namespace, device: torch.device) -> str:
    lines = [
        "## Training speed: MEMO ResNet-32, CIFAR-sized images",
        "",
        f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- where: {device.type} ({machine(device)}), Python {platform.python_version()}, torch {torch.__version__}",
        f"- what: one training step (augment + forward + backward + SGD) at batch {args.batch}, "
        f"old branches frozen, trunk trained; {args.warmup} warm-up steps, {args.steps} timed",
        f"- command: `.venv/bin/python benchmarks/train_speed.py --device {device.type} --steps {args.steps} --write {args.write}`",
        "",
        "| tasks (branches) | median step (s) | p95 step (s) | images/s | vs T=1 |",
        "|---|---|---|---|---|",
    ]
    base = rows[0]["images_per_s"]
    for r in rows:
        lines.append(f"| {r['tasks']} | {r['median_s']:.3f} | {r['p95_s']:.3f} | {r['images_per_s']:.0f} | "
                     f"{r['images_per_s'] / base:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tasks", default="1,5,10")
    parser.add_argument("--write", type=Path, help="Markdown file whose section to replace, e.g. docs/benchmarks.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [measure(int(t), batch=args.batch, steps=args.steps, warmup=args.warmup, device=device)
            for t in args.tasks.split(",")]
    section = to_markdown(rows, args, device)
    print(section)
    if args.write:
        write_section(args.write, "train_speed", section)


if __name__ == "__main__":
    main()
