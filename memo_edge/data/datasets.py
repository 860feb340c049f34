"""Datasets by spec string: ``digits``, ``cifar100``, ``npz:PATH``, ``imagefolder:PATH``.

A spec string is what a user types after ``--dataset``; it names one loader and, for the file-based
forms, the directory to read. Every loader returns the same ``Dataset`` record, so the trainer never
branches on where the images came from. Nothing here imports torch: torchvision is imported lazily by
the cifar100 loader only, scikit-learn by the digits loader only.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from memo_edge.data.npz_files import listed_files, meta_class_names, meta_stats, read_meta, read_parts, split_files
from memo_edge.data.sources import ArraySource, FolderSource, ImageSource, eval_resize
from memo_edge.errors import InputError

__all__ = [
    "Dataset", "DatasetKind", "DATASETS", "VALID_SPECS", "parse_dataset_spec", "load_dataset", "pixel_stats", "keep_classes",
    "folder_source", "dataset_dirs",
]

log = logging.getLogger(__name__)

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
Stats = tuple[float, float, float]


@dataclass(frozen=True)
class Dataset:
    name: str
    train: ImageSource
    test: ImageSource
    class_names: tuple[str, ...]  # indexed by the dataset's original label id
    mean: Stats  # of pixels in [0, 1], for normalisation
    std: Stats
    augment: str  # "cifar" (crop + flip + brightness) or "imagenet" (random resized crop + flip)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape


Loader = Callable[[Path | None, Path | None, bool, int | None], Dataset]


@dataclass(frozen=True)
class DatasetKind:
    """One registered spec form: its name, whether it takes ``:PATH``, and its loader."""

    name: str
    takes_path: bool
    summary: str
    load: Loader

    @property
    def form(self) -> str:
        return f"{self.name}:PATH" if self.takes_path else self.name


def pixel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[Stats, Stats]:
    """Per-channel mean and std of uint8 images scaled to [0, 1], in chunks to bound memory."""
    total = np.zeros(images.shape[-1], np.float64)
    squares = np.zeros(images.shape[-1], np.float64)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
        total += block.sum(axis=0)
        squares += np.square(block).sum(axis=0)
    count = max(1, len(images) * images.shape[1] * images.shape[2])
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    return _stats3(mean), _stats3(std)


def _stats3(values: Any) -> Stats:
    a, b, c = (float(v) for v in values)
    return (a, b, c)


def _fixed_size(name: str, native: tuple[int, int], image_size: int | None) -> None:
    """In-memory datasets have one size; refuse a different one rather than silently ignore it."""
    if image_size is not None and (image_size, image_size) != tuple(native):
        h, w = native
        raise InputError(f"{name}: images are {h}x{w}; --image-size {image_size} applies to imagefolder only")


def keep_classes(dataset: Dataset, classes: Sequence[int]) -> Dataset:
    """Only ``classes`` (original ids), relabelled 0..k-1 in the given order: small experiments on a
    slice of a large dataset. Normalisation constants stay those of the whole dataset."""
    lookup = np.full(dataset.num_classes, -1, np.int64)
    lookup[np.asarray(classes, np.int64)] = np.arange(len(classes))

    def keep(source: ImageSource) -> ImageSource:
        idx = np.flatnonzero(lookup[source.labels] >= 0)
        return source.subset(idx).with_labels(lookup[source.labels[idx]])

    names = tuple(dataset.class_names[c] for c in classes)
    return replace(dataset, train=keep(dataset.train), test=keep(dataset.test), class_names=names)


# --- digits ---------------------------------------------------------------------------------------


def _load_digits(path: Path | None, data_dir: Path | None, download: bool, image_size: int | None) -> Dataset:
    """scikit-learn's bundled 8x8 digits as 32x32 RGB: a real dataset for tests and demos, no files needed."""
    from sklearn.datasets import load_digits  # lazy: the only scikit-learn use in the data module

    _fixed_size("digits", (32, 32), image_size)
    bunch = load_digits()
    small = np.round(np.asarray(bunch.images, np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im, "L").resize((32, 32), Image.Resampling.BILINEAR)) for im in small])
    images = np.repeat(big[..., None], 3, axis=3)
    labels = np.asarray(bunch.target, np.int64)
    train_idx, test_idx = _stratified_split(labels, test_fraction=0.2, seed=0)
    train = ArraySource(images[train_idx], labels[train_idx])
    mean, std = pixel_stats(train.images)
    test = ArraySource(images[test_idx], labels[test_idx])
    names = tuple(str(c) for c in range(10))
    return Dataset("digits", train, test, names, mean, std, "cifar")


def _stratified_split(labels: np.ndarray, *, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class (in class order) one seeded permutation; the first round(fraction * n) go to test."""
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(members)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# --- cifar100 (torchvision) -----------------------------------------------------------------------


def _load_cifar100(path: Path | None, data_dir: Path | None, download: bool, image_size: int | None) -> Dataset:
    _fixed_size("cifar100", (32, 32), image_size)
    if data_dir is None:
        raise InputError("cifar100: no --data-dir given; point it at a directory (pass --download to fetch the data)")
    data_dir = Path(data_dir).expanduser()
    if not download and not (data_dir / "cifar-100-python").is_dir():
        raise InputError(f"cifar100: no CIFAR-100 in {data_dir} (cifar-100-python/ missing); pass --download")
    from torchvision.datasets import CIFAR100  # lazy: keeps torch out of the data module's imports

    # torchvision checks the md5 of every official file before unpickling it; only files that match the
    # published CIFAR-100 release get unpickled, which is why this is acceptable under the no-pickle rule.
    try:
        splits = [CIFAR100(root=str(data_dir), train=train, download=download) for train in (True, False)]
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        problem = "is missing or fails its md5 check"
        raise InputError(f"cifar100: CIFAR-100 in {data_dir} {problem}; pass --download") from exc
    except OSError as exc:  # download or disk failure
        raise InputError(f"cifar100: cannot fetch or read CIFAR-100 in {data_dir}: {exc}") from exc
    train, test = (ArraySource(np.ascontiguousarray(s.data), np.asarray(s.targets, np.int64)) for s in splits)
    names = tuple(str(n) for n in splits[0].classes)
    return Dataset("cifar100", train, test, names, CIFAR100_MEAN, CIFAR100_STD, "cifar")


# --- npz:PATH ------------------------------------------------------------------------------------


def _load_npz(path: Path | None, data_dir: Path | None, download: bool, image_size: int | None) -> Dataset:
    """train-*.npz + test-*.npz (+ meta.json): the portable, pickle-free format for array datasets."""
    root = _existing_dir(path, "npz")
    where = f"npz:{root}"
    meta = read_meta(root, where)
    listed = listed_files(meta, where)
    names = meta_class_names(meta, where)
    train_files, test_files = (split_files(root, split, listed, where) for split in ("train", "test"))
    train_x, train_y = read_parts(train_files, listed, None if names is None else len(names), where)
    if not len(train_y):
        raise InputError(f"{where}: the train-*.npz files hold no images")
    num_classes = len(names) if names is not None else int(train_y.max()) + 1
    test_x, test_y = read_parts(test_files, listed, num_classes, where)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise InputError(f"{where}: train images are {train_x.shape[1:]} but test images are {test_x.shape[1:]}")
    _fixed_size(where, train_x.shape[1:3], image_size)
    missing = np.setdiff1d(np.arange(num_classes), train_y)
    if missing.size:
        raise InputError(f"{where}: classes {missing[:10].tolist()} have no training images")
    mean, std = meta_stats(meta, where) or pixel_stats(train_x)
    names = names or tuple(str(c) for c in range(num_classes))
    train, test = ArraySource(train_x, train_y), ArraySource(test_x, test_y)
    return Dataset(f"npz:{root.resolve()}", train, test, names, mean, std, "cifar")


def _existing_dir(path: Path | None, kind: str) -> Path:
    if path is None or not Path(path).expanduser().is_dir():
        raise InputError(f"{kind}:{path}: no such directory")
    return Path(path).expanduser()


# --- imagefolder:PATH ----------------------------------------------------------------------------


def _load_imagefolder(path: Path | None, data_dir: Path | None, download: bool, image_size: int | None) -> Dataset:
    """PATH/train/<class>/* and PATH/val/<class>/*, decoded lazily (ImageNet layout)."""
    root = _existing_dir(path, "imagefolder")
    where = f"imagefolder:{root}"
    size = 224 if image_size is None else int(image_size)
    if size < 8:
        raise InputError(f"{where}: --image-size must be at least 8, got {size}")
    classes = _class_dirs(root / "train", where)
    val_classes = _class_dirs(root / "val", where)
    if set(classes) != set(val_classes):
        only_train = sorted(set(classes) - set(val_classes))[:5]
        only_val = sorted(set(val_classes) - set(classes))[:5]
        raise InputError(
            f"{where}: train/ and val/ class folders differ (only in train: {only_train}, only in val: {only_val})"
        )
    resize_to = eval_resize(size, "imagenet")
    train = folder_source(root / "train", classes, size, resize_to, where, require_each=True)
    test = folder_source(root / "val", classes, size, resize_to, where, require_each=False)
    name = f"imagefolder:{root.resolve()}"
    return Dataset(name, train, test, tuple(classes), IMAGENET_MEAN, IMAGENET_STD, "imagenet")


def _class_dirs(split_dir: Path, where: str) -> list[str]:
    if not split_dir.is_dir():
        raise InputError(f"{where}: missing {split_dir.name}/ directory")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise InputError(f"{where}: {split_dir.name}/ needs at least 2 class folders, found {len(classes)}")
    return classes


def folder_source(
    split_dir: Path, classes: list[str], size: int, resize_to: int, where: str, *, require_each: bool
) -> FolderSource:
    paths: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        files = _image_files(split_dir / cls)
        if not files and require_each:
            kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise InputError(f"{where}: {split_dir.name}/{cls}/ has no images ({kinds})")
        if not files:
            log.warning("%s: %s/%s/ has no images", where, split_dir.name, cls)
        paths.extend(files)
        labels.extend([label] * len(files))
    return FolderSource(paths, np.asarray(labels, np.int64), size, resize_to)


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder``, sorted; os.walk avoids a stat per file on ImageNet-sized trees."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [
            Path(dirpath, f) for f in filenames if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS
        ]
    return sorted(found)


# --- the registry ---------------------------------------------------------------------------------

DATASETS: dict[str, DatasetKind] = {
    kind.name: kind
    for kind in (
        DatasetKind("digits", False, "scikit-learn's 8x8 digits as 32x32 RGB (bundled, no files)", _load_digits),
        DatasetKind("cifar100", False, "CIFAR-100 via torchvision under --data-dir", _load_cifar100),
        DatasetKind("npz", True, "PATH/train-*.npz + test-*.npz (x uint8 NHWC, y), optional meta.json", _load_npz),
        DatasetKind("imagefolder", True, "PATH/train/<class>/*, PATH/val/<class>/*", _load_imagefolder),
    )
}
VALID_SPECS = ", ".join(kind.form for kind in DATASETS.values())


def parse_dataset_spec(spec: str) -> tuple[DatasetKind, Path | None]:
    """``"npz:/data/x"`` -> (the npz kind, Path("/data/x")); anything unknown names the valid forms."""
    name, sep, rest = spec.strip().partition(":")
    kind = DATASETS.get(name.lower())
    if kind is None:
        raise InputError(f"unknown dataset {spec!r}; valid forms: {VALID_SPECS}")
    if kind.takes_path and not rest:
        raise InputError(f"dataset {spec!r} needs a directory: {kind.form}")
    if not kind.takes_path and sep:
        raise InputError(f"dataset {spec!r}: {kind.name} takes no path (use --data-dir for cifar100)")
    return kind, (Path(rest).expanduser() if kind.takes_path else None)


def dataset_dirs(spec: str, data_dir: str | os.PathLike[str] | None = None) -> tuple[Path, ...]:
    """The directories ``spec`` reads from (its ``:PATH``, and ``--data-dir`` when given): the inputs
    an output directory must stay apart from."""
    _, path = parse_dataset_spec(spec)
    return tuple(Path(p).expanduser() for p in (path, data_dir) if p)


def load_dataset(
    spec: str, *, data_dir: Path | None = None, download: bool = False, image_size: int | None = None
) -> Dataset:
    """Load the dataset named by ``spec``; every user mistake surfaces as one-line ``InputError``."""
    kind, path = parse_dataset_spec(spec)
    started = time.perf_counter()
    dataset = kind.load(path, data_dir, download, image_size)
    log.info(
        "dataset %s: %d train / %d test images %s, %d classes (%.1fs)",
        dataset.name, len(dataset.train), len(dataset.test), dataset.image_shape, dataset.num_classes,
        time.perf_counter() - started,
    )
    return dataset
