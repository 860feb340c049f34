"""Stage data for the GPU machine in ``.gpu-data/`` (git-ignored): it has no network, never sees
../shared, and takes at most 64 MiB per call, so the real CIFAR-100 (170 MB) cannot travel whole.

``subset``: the first ``--classes`` classes of the seeded class order (the one ``memo-edge train``
draws with ``--seed``), taken through memo-edge's own loader exactly as ``--classes`` takes them
(``make_class_order`` + ``keep_classes``): images stay in their source order, labels become positions
in the seeded order, the normalisation constants stay those of the whole source (``keep_classes``
keeps them: from the source's meta.json "pixel_stats_train", else computed over its whole train
split), so ``npz:SUBSET --no-shuffle`` is the same run as ``npz:SOURCE --classes K --seed SEED``.
Each source file gives one file of the same name with its kept images, and every extra per-image
array it holds (CIFAR-100's ``y_coarse``, ``index``). 20 CIFAR-100 classes: about 34 MB.

``synthetic``: class-structured random CIFAR-shaped images (a per-class colour and coarse pattern
plus per-image noise, so a model learns something), made on the machine for speed runs, numpy only,
the same bytes for the same arguments and seed.

Both write the npz format ``npz:PATH`` reads (``train-NN.npz`` / ``test-NN.npz`` + meta.json with
class names, pixel statistics, sha256 and size of every file, provenance), into a temp directory
that is fsynced and renamed into place; when the output already holds this request with intact
files, nothing is written.

    .venv/bin/python benchmarks/stage_gpu_data.py subset --source ../shared/datasets/cifar100 \\
        --out .gpu-data/cifar100-20 --classes 20 --seed 1993
    .venv/bin/python benchmarks/stage_gpu_data.py synthetic --out /tmp/synth --classes 100 \\
        --train-per-class 500 --test-per-class 100 --seed 0
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from memo_edge.data.datasets import keep_classes, load_dataset, pixel_stats
from memo_edge.data.npz_files import listed_files, read_meta, split_files
from memo_edge.data.scenario import DEFAULT_SEED, make_class_order
from memo_edge.utils.io import atomic_directory, sha256_file

FORMAT_VERSION = 1  # of what this script writes: bump when the same request would give other bytes
COMPRESSION = {"deflate": zipfile.ZIP_DEFLATED, "store": zipfile.ZIP_STORED}
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed entry timestamps: the same arrays always give the same bytes
SPLITS = ("train", "test")


# --- writing ---------------------------------------------------------------------------------------


def write_npz(path: Path, arrays: dict[str, np.ndarray], compression: str) -> None:
    """An npz ``np.load`` reads, byte-for-byte reproducible (``np.savez`` stamps the current time)."""
    with zipfile.ZipFile(path, "w", compression=COMPRESSION[compression], allowZip64=True) as zf:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_TIME)
            info.compress_type = COMPRESSION[compression]
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            zf.writestr(info, buffer.getvalue())


def file_entries(root: Path, parts: list[tuple[str, str, int]]) -> list[dict[str, Any]]:
    """meta.json "files": (file, split, count) with its size and sha256, as the npz loader checks them."""
    return [{"file": name, "split": split, "count": count, "bytes": (root / name).stat().st_size,
             "sha256": sha256_file(root / name)} for name, split, count in parts]


def up_to_date(out: Path, request: dict[str, Any]) -> bool:
    """Whether ``out`` already holds this request with every listed file intact and no other npz."""
    try:
        meta = json.loads((out / "meta.json").read_text())
        if meta["provenance"]["request"] != request:
            return False
        listed = {e["file"]: e for e in meta["files"]}
        if {p.name for p in out.glob("*.npz")} != set(listed):
            return False
        return all((out / name).stat().st_size == e["bytes"] and sha256_file(out / name) == e["sha256"]
                   for name, e in listed.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def stage(out: Path, request: dict[str, Any], build: Callable[[Path], dict[str, Any]]) -> tuple[bool, int]:
    """``build(tmp)`` writes the npz files and returns meta.json; (whether written, bytes in ``out``)."""
    if up_to_date(out, request):
        return False, dir_bytes(out)
    with atomic_directory(out) as tmp:
        meta = build(tmp)
        meta["provenance"] = {**meta.get("provenance", {}), "request": request,
                              "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return True, dir_bytes(out)


def dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.iterdir() if p.is_file())


# --- subset ----------------------------------------------------------------------------------------


def subset_request(source: Path, classes: int, seed: int, compression: str) -> dict[str, Any]:
    """What the subset depends on: the source files' sha256 (hashed here, not trusted from meta.json)."""
    files = sorted(source.glob("*.npz")) + [source / "meta.json"]
    return {"mode": "subset", "format_version": FORMAT_VERSION, "classes": classes, "seed": seed,
            "compression": compression, "source_sha256": {f.name: sha256_file(f) for f in files if f.is_file()}}


def build_subset(source: Path, classes: int, seed: int, compression: str) -> Callable[[Path], dict[str, Any]]:
    def build(tmp: Path) -> dict[str, Any]:
        full = load_dataset(f"npz:{source}")  # verifies every listed sha256
        if not 2 <= classes <= full.num_classes:
            raise SystemExit(f"--classes {classes}: {full.name} has {full.num_classes} classes")
        order = make_class_order(full.num_classes, seed=seed)[:classes]
        kept = keep_classes(full, order)  # what load_run_data does for --classes: the run's very arrays
        meta = read_meta(source, f"npz:{source}")
        parts = []
        for split in SPLITS:
            part = kept.train if split == "train" else kept.test
            images, labels = part.images, part.labels  # type: ignore[attr-defined]  (npz gives ArraySources)
            start = 0
            for file in split_files(source, split, listed_files(meta, str(source)), str(source)):
                with np.load(file, allow_pickle=False) as data:
                    extra = {k: data[k] for k in data.files if k not in ("x", "y")}
                    mask = np.isin(data["y"], order)
                n = int(mask.sum())
                if not n:
                    continue
                arrays = {"x": images[start : start + n], "y": labels[start : start + n]}
                arrays |= {k: v[mask] for k, v in extra.items() if v.ndim and len(v) == len(mask)}
                start += n
                write_npz(tmp / file.name, arrays, compression)
                parts.append((file.name, split, n))
            if start != len(labels):
                raise AssertionError(f"{split}: the files gave {start} kept images, the loader {len(labels)}")
        stats_from = ("the source's meta.json pixel_stats_train" if "pixel_stats_train" in meta
                      else "computed by the npz loader over the whole source train split")
        return {
            "dataset": f"first {classes} classes of the seed-{seed} class order of {meta.get('dataset', source.name)}",
            "class_names": list(kept.class_names),
            "pixel_stats_train": {"mean": list(full.mean), "std": list(full.std)},
            "counts": {"train": int(len(kept.train)), "test": int(len(kept.test)),
                       "train_per_class": np.bincount(kept.train.labels, minlength=classes).tolist(),
                       "test_per_class": np.bincount(kept.test.labels, minlength=classes).tolist()},
            "files": file_entries(tmp, parts),
            **({"coarse_label_names": meta["coarse_label_names"]} if "coarse_label_names" in meta else {}),
            "provenance": {
                "made_by": "benchmarks/stage_gpu_data.py subset",
                "source": str(source.resolve()),
                "class_order": list(order),  # original ids: new label i is source class class_order[i]
                "pixel_stats_train": f"{stats_from} (the whole dataset's, as keep_classes keeps them)",
                "same_run_as": f"npz:{source.resolve()} --classes {classes} --seed {seed}, "
                               "when this directory is trained with --no-shuffle",
            },
        }

    return build


# --- synthetic -------------------------------------------------------------------------------------


def synthetic_split(rng: np.random.Generator, prototypes: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` noisy, shifted, brightness-jittered copies of every prototype, in a shuffled order."""
    k = len(prototypes)
    labels = rng.permutation(np.repeat(np.arange(k, dtype=np.int64), per_class))
    images = np.empty((len(labels), 32, 32, 3), np.uint8)
    for start in range(0, len(labels), 4096):  # bounded memory: int16 work arrays of 4096 images
        y = labels[start : start + 4096]
        shift = rng.integers(-2, 3, size=2)  # one shift per block: cheap, and still not one fixed image
        base = np.roll(prototypes[y], tuple(int(s) for s in shift), axis=(1, 2)).astype(np.int16)
        base += rng.integers(-24, 25, size=(len(y), 1, 1, 1), dtype=np.int16)  # brightness
        base += rng.integers(-40, 41, size=base.shape, dtype=np.int16)  # pixel noise
        images[start : start + len(y)] = np.clip(base, 0, 255).astype(np.uint8)
    return images, labels


def build_synthetic(classes: int, train_per_class: int, test_per_class: int, seed: int, part_size: int,
                    compression: str) -> Callable[[Path], dict[str, Any]]:
    def build(tmp: Path) -> dict[str, Any]:
        rng = np.random.default_rng(seed)
        colour = rng.integers(40, 216, size=(classes, 1, 1, 3))
        pattern = rng.integers(-60, 61, size=(classes, 4, 4, 3)).repeat(8, axis=1).repeat(8, axis=2)
        prototypes = np.clip(colour + pattern, 0, 255).astype(np.uint8)
        parts, stats = [], None
        for split, per_class in (("train", train_per_class), ("test", test_per_class)):
            images, labels = synthetic_split(rng, prototypes, per_class)
            stats = stats or pixel_stats(images)
            for i, start in enumerate(range(0, len(labels), part_size)):
                name = f"{split}-{i:02d}.npz"
                write_npz(tmp / name, {"x": images[start : start + part_size], "y": labels[start : start + part_size]},
                          compression)
                parts.append((name, split, len(labels[start : start + part_size])))
        mean, std = stats
        return {
            "dataset": f"synthetic CIFAR-shaped, {classes} classes, seed {seed}",
            "class_names": [f"synthetic-{c:03d}" for c in range(classes)],
            "pixel_stats_train": {"mean": list(mean), "std": list(std)},
            "counts": {"train": classes * train_per_class, "test": classes * test_per_class,
                       "train_per_class": train_per_class, "test_per_class": test_per_class},
            "files": file_entries(tmp, parts),
            "provenance": {"made_by": "benchmarks/stage_gpu_data.py synthetic",
                           "generator": "per-class colour + 4x4 pattern (8x8 cells), brightness and pixel noise, "
                                        "block shifts; numpy default_rng(seed)",
                           "numpy": np.__version__},
        }

    return build


# --- command line ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    sub = modes.add_parser("subset", help="the first K classes of the seeded order of an npz dataset")
    sub.add_argument("--source", type=Path, required=True, help="npz dataset directory (e.g. ../shared/datasets/cifar100)")
    sub.add_argument("--classes", type=int, default=20, help="how many classes of the seeded order to keep")
    sub.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the class-order seed of the run (train --seed)")
    syn = modes.add_parser("synthetic", help="class-structured random CIFAR-shaped data")
    syn.add_argument("--classes", type=int, default=100, help="number of classes")
    syn.add_argument("--train-per-class", type=int, default=500, help="training images per class")
    syn.add_argument("--test-per-class", type=int, default=100, help="test images per class")
    syn.add_argument("--seed", type=int, default=0, help="generator seed: the same seed gives the same bytes")
    syn.add_argument("--part-size", type=int, default=10_000, help="images per npz file")
    for mode, default in ((sub, "deflate"), (syn, "store")):
        mode.add_argument("--out", type=Path, required=True, help="output directory (replaced atomically)")
        mode.add_argument("--compression", choices=sorted(COMPRESSION), default=default,
                          help=f"npz entries deflated (small, to carry) or stored (fast); default {default}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.mode == "subset":
        request = subset_request(args.source, args.classes, args.seed, args.compression)
        build = build_subset(args.source, args.classes, args.seed, args.compression)
    else:
        if min(args.classes, args.train_per_class, args.test_per_class, args.part_size) < 1:
            raise SystemExit("--classes, --train-per-class, --test-per-class and --part-size must be positive")
        request = {"mode": "synthetic", "format_version": FORMAT_VERSION, "classes": args.classes,
                   "train_per_class": args.train_per_class, "test_per_class": args.test_per_class,
                   "seed": args.seed, "part_size": args.part_size, "compression": args.compression,
                   "numpy": np.__version__}
        build = build_synthetic(args.classes, args.train_per_class, args.test_per_class, args.seed, args.part_size,
                                args.compression)
    written, size = stage(args.out, request, build)
    what = "wrote" if written else "up to date (checksums match), left unchanged:"
    print(f"{what} {args.out}: {size / 1e6:.1f} MB ({size / 2**20:.1f} MiB) in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
