"""Inference on a package: ``load(path)`` -> ``Runtime.predict(batch)``. Never imports torch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memo_edge.data.sources import FolderSource
from memo_edge.errors import InputError
from memo_edge.runtime.backends import create_backend
from memo_edge.runtime.head import softmax
from memo_edge.runtime.package import InputSpec, PackageVersion, open_package

__all__ = ["Runtime", "load", "as_image_batch", "read_inputs"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def as_image_batch(batch: Any, spec: InputSpec) -> np.ndarray:
    """uint8 [N,H,W,C] as is; float [N,C,H,W] with pixels in [0, 1] (ToTensor's convention) converted.

    Anything else is refused with the shapes and dtypes that are accepted.
    """
    x = np.asarray(batch)
    h, w, c = spec.shape
    if x.dtype == np.uint8 and x.ndim == 4 and x.shape[1:] == (h, w, c):
        return np.ascontiguousarray(x)
    if x.dtype in (np.float32, np.float64) and x.ndim == 4 and x.shape[1:] == (c, h, w):
        return np.ascontiguousarray(np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1))
    raise InputError(f"expected uint8 [N,{h},{w},{c}] (NHWC) or float32 [N,{c},{h},{w}] (NCHW, pixels in 0..1); "
                     f"got {x.dtype} {list(x.shape)}")


@dataclass
class Runtime:
    """A loaded package version and the backend that runs it."""

    package: PackageVersion
    backend: Any

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.package.manifest.class_names

    def predict(self, batch: Any) -> tuple[np.ndarray, np.ndarray]:
        """(labels [N], scores [N, classes]: softmax probabilities) for a batch of images."""
        images = as_image_batch(batch, self.package.manifest.input)
        probs = softmax(self.backend.logits(images))
        return probs.argmax(axis=1), probs


def load(path: str | Path, *, backend: str = "auto", version: int | None = None, **options: Any) -> Runtime:
    """Open (and verify) a package and pick a backend: ``auto`` takes the fastest one available."""
    package = open_package(Path(path), version=version)
    return Runtime(package, create_backend(backend, package, **options))


def read_inputs(inputs: Sequence[Path], spec: InputSpec, augment: str, batch_size: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """Batches of (names, uint8 images), in the order given, from image files, directories of images
    and npz files (key ``x``)."""
    files: list[Path] = []
    for item in inputs:
        if item.suffix == ".npz":
            yield from _file_batches(files, spec, augment, batch_size)
            files = []
            yield from _npz_batches(item, spec, batch_size)
        elif item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise InputError(f"{item}: no such file or directory")
    yield from _file_batches(files, spec, augment, batch_size)


def _file_batches(files: list[Path], spec: InputSpec, augment: str, batch_size: int) -> Iterator[tuple[list[str], np.ndarray]]:
    if not files:
        return
    # Resized as the training data was: CIFAR-style packages to the input size, ImageNet-style ones
    # to 256/224 of it, then centre-cropped (FolderSource does both).
    resize_to = spec.height if augment == "cifar" else round(spec.height * 256 / 224)
    source = FolderSource(files, np.zeros(len(files), np.int64), spec.height, resize_to)
    for start in range(0, len(files), batch_size):
        idx = np.arange(start, min(start + batch_size, len(files)))
        yield [str(files[i]) for i in idx], source.take(idx)


def _npz_batches(path: Path, spec: InputSpec, batch_size: int) -> Iterator[tuple[list[str], np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            x = data["x"]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: not an npz with an 'x' array of images ({exc})") from None
    x = as_image_batch(x, spec)
    for start in range(0, len(x), batch_size):
        yield [f"{path}#{i}" for i in range(start, min(start + batch_size, len(x)))], x[start : start + batch_size]
