"""Exemplar codecs on this machine: stored size, encode and decode time per image (memo_edge.memory.codec).

On `--images` CIFAR-100 training images (a fixed random sample, seed 0): each codec's mean and max
stored size and its ratio to raw, the mean absolute pixel error of its round trip, and the time per
image to encode and to decode, best of `--repeats` passes (one thread, Pillow's encoders and decoders,
what `train`, `update` and a package load run). Decode time x exemplars is what loading a package's
exemplar memory costs on the device (`update` decodes it once before training).

    .venv/bin/python benchmarks/codec_speed.py [--data DIR] [--images 2000] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import time
from pathlib import Path

import numpy as np
import PIL

from memo_edge.data.datasets import load_dataset
from memo_edge.memory.codec import parse_codec

from _report import cpu_name, load_average, write_section  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
CODECS = ("raw", "png", "jpeg:50", "jpeg:75", "jpeg:90", "webp:50", "webp:75", "webp:90")


def default_data() -> Path:
    for candidate in (ROOT.parent / "shared" / "datasets" / "cifar100", Path("/work/shared/datasets/cifar100")):
        if candidate.is_dir():
            return candidate
    raise SystemExit("no CIFAR-100 npz copy found; pass --data DIR")


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    data = load_dataset(f"npz:{args.data or default_data()}")
    pick = np.sort(np.random.default_rng(0).permutation(len(data.train))[: args.images])
    images = data.train.take(pick)
    raw = int(np.prod(images.shape[1:]))
    rows = []
    for spec in CODECS:
        codec = parse_codec(spec)
        blobs = codec.encode_many(images)
        decoded = codec.decode_many(blobs, images.shape[1:])
        sizes = np.array([len(b) for b in blobs])
        enc = best_of(lambda: codec.encode_many(images), args.repeats) / len(images)
        dec = best_of(lambda: codec.decode_many(blobs, images.shape[1:]), args.repeats) / len(images)
        rows.append(f"| {spec} | {sizes.mean():,.0f} | {sizes.max():,} | {raw / sizes.mean():.2f} | "
                    f"{np.abs(decoded.astype(int) - images).mean():.2f} | {1e6 * enc:.0f} | {1e6 * dec:.0f} | "
                    f"{2000 * dec * 1000:.0f} |")
    text = "\n".join([
        "## Exemplar codecs: size and speed (issue 14)",
        "",
        f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- where: {cpu_name()}, Python {platform.python_version()}, Pillow {PIL.__version__} (one thread); "
        f"1-minute load average {load_average()} at the end",
        f"- what: {len(images):,} CIFAR-100 training images (random, seed 0), 32x32x3 = {raw:,} B raw; jpeg:Q stores "
        "abbreviated streams (no tables; memo_edge/memory/codec.py); times are the best of "
        f"{args.repeats} passes",
        f"- command: `.venv/bin/python benchmarks/codec_speed.py --images {args.images} --write docs/benchmarks.md`",
        "",
        "| codec | mean B | max B | x smaller than raw | mean abs. pixel error | encode us/img | decode us/img | "
        "decode 2,000 exemplars (ms) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    print(text)
    if args.write:
        write_section(args.write, "codec_speed", text)


if __name__ == "__main__":
    main()
