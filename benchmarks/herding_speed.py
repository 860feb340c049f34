"""Speed of ``herding_order`` (iCaRL herding, one class at a time), against a naive reference.

Herding runs once per class after every task, on the features of that class's training images:
n images, d = 64 x T feature dimensions for CIFAR ResNets at T tasks (512 x T for ResNet-18),
m exemplars kept. ``herding_order`` ranks all candidates with one matrix-vector product per step;
the naive reference recomputes the distance of every candidate mean from scratch (what the
algorithm's definition says), and is timed only where it finishes in seconds. Random normal
features (herding's cost does not depend on their values); one warm-up call, then the median of
the timed calls.

    .venv/bin/python benchmarks/herding_speed.py [--repeats 5] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from memo_edge.memory.herding import herding_order, l2_normalize

from _report import cpu_name, load_average, write_section  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

# (n images of the class, d feature dims, m exemplars, what it stands for)
CASES = (
    (500, 64, 20, "CIFAR-100 class, T = 1, 20 exemplars"),
    (500, 640, 20, "CIFAR-100 class, T = 10, 20 exemplars"),
    (500, 640, 200, "CIFAR-100 class, T = 10, 200 exemplars"),
    (500, 640, 500, "CIFAR-100 class, T = 10, all 500 ordered"),
    (1300, 5120, 20, "ImageNet class, ResNet-18, T = 10, 20 exemplars"),
)
NAIVE_MAX_WORK = 500 * 640 * 20  # n * d * m of the largest case the naive reference is timed on (seconds)


def naive_herding(features: np.ndarray, m: int) -> list[int]:
    """The definition: at step k take the unpicked row whose addition keeps the mean closest to mu."""
    f = l2_normalize(features)
    mu = f.mean(axis=0)
    picked: list[int] = []
    for _ in range(min(m, len(f))):
        candidates = [i for i in range(len(f)) if i not in picked]
        distances = [np.linalg.norm(mu - f[picked + [i]].mean(axis=0)) for i in candidates]
        picked.append(candidates[int(np.argmin(distances))])
    return picked


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (BLAS threads, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(args: argparse.Namespace) -> list[dict[str, object]]:
    rows = []
    for n, d, m, label in CASES:
        f = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
        row: dict[str, object] = {"n": n, "d": d, "m": m, "label": label,
                                  "fast": median_seconds(lambda: herding_order(f, m), args.repeats)}
        if n * d * m <= NAIVE_MAX_WORK:
            assert naive_herding(f, m) == herding_order(f, m).tolist(), "the two implementations disagree"
            row["naive"] = median_seconds(lambda: naive_herding(f, m), 1)
        rows.append(row)
    return rows


def to_markdown(rows: list[dict[str, object]], args: argparse.Namespace, load: tuple[str, str]) -> str:
    lines = [
        "## Herding speed: `herding_order` per class",
        "",
        f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- where: {cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, numpy "
        f"{np.__version__}; 1-min load average {load[0]} before the run, {load[1]} after it (counting the run itself)",
        f"- what: `herding_order(features, m)` on random float32 features [n, d], one warm-up call then the median of "
        f"{args.repeats} calls; naive = the algorithm's definition (mean of every candidate set recomputed), one "
        f"timed call after a warm-up, on the smaller cases only; both pick the same exemplars (checked)",
        f"- command: `.venv/bin/python benchmarks/herding_speed.py --repeats {args.repeats} --write {args.write}`",
        "",
        "| case | n | d | m | herding_order (ms) | naive (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        naive = f"{1e3 * r['naive']:.0f}" if "naive" in r else "not run"  # type: ignore[operator]
        fast = 1e3 * r["fast"]  # type: ignore[operator]
        lines.append(f"| {r['label']} | {r['n']} | {r['d']} | {r['m']} | {fast:.1f} | {naive} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", type=Path, help="Markdown file whose section to replace, e.g. docs/benchmarks.md")
    args = parser.parse_args()
    start = load_average()
    rows = measure(args)
    section = to_markdown(rows, args, (start, load_average()))
    print(section)
    if args.write:
        write_section(args.write, "herding_speed", section)


if __name__ == "__main__":
    main()
