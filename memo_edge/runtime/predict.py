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


def _first_at(mask: np.ndarray) -> str:
    """Where the first True of an [N,C,H,W] mask is, in words."""
    n, ch, row, col = (int(i) for i in np.argwhere(mask)[0])
    return f"first at image {n}, channel {ch}, row {row}, column {col}"


def _check_unit_pixels(x: np.ndarray) -> None:
    """Float pixels must be finite and in [0, 1]: clipping NaN or 0..255 data would answer garbage."""
    bad = ~np.isfinite(x)
    if bad.any():
        raise InputError(f"float pixels must be finite; {int(bad.sum())} value(s) are NaN or infinite, {_first_at(bad)}")
    bad = (x < 0.0) | (x > 1.0)
    if bad.any():
        lo, hi = float(x.min()), float(x.max())
        raise InputError(f"float pixels must be in [0, 1] (ToTensor's convention; divide 0..255 data by 255); "
                         f"{int(bad.sum())} value(s) lie outside (min {lo:g}, max {hi:g}), {_first_at(bad)}")


def as_image_batch(batch: Any, spec: InputSpec) -> np.ndarray:
    """uint8 [N,H,W,C] as is; float [N,C,H,W] with pixels in [0, 1] (ToTensor's convention) converted.

    Anything else, and float pixels that are not finite or lie outside [0, 1], is refused with what is
    accepted.
    """
    x = np.asarray(batch)
    h, w, c = spec.shape
    if x.dtype == np.uint8 and x.ndim == 4 and x.shape[1:] == (h, w, c):
        return np.ascontiguousarray(x)
    if x.dtype in (np.float32, np.float64) and x.ndim == 4 and x.shape[1:] == (c, h, w):
        _check_unit_pixels(x)
        return np.ascontiguousarray(np.rint(x * 255.0).astype(np.uint8).transpose(0, 2, 3, 1))
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


def load(path: str | Path, *, backend: str = "auto", version: int | None = None,
         hints: dict[str, Any] | None = None, **options: Any) -> Runtime:
    """Open (and verify) a package and pick a backend: ``auto`` takes the fastest one available.
    ``options`` and ``hints`` as ``create_backend`` takes them."""
    package = open_package(Path(path), version=version)
    return Runtime(package, create_backend(backend, package, hints=hints, **options))


def _image_files(folder: Path) -> list[Path]:
    """The images under ``folder``, sorted; a directory without any is refused (likely the wrong one)."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, "
                         "also in subdirectories)")
    return files


def read_inputs(inputs: Sequence[Path], spec: InputSpec, batch_size: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """Batches of (names, uint8 images), in the order given, from image files, directories of images
    and npz files (key ``x``). Missing paths and directories without images are refused before the
    first batch, so a refused call prints nothing."""
    groups: list[Path | list[Path]] = []  # an npz file, or a run of image files
    for item in inputs:
        if item.suffix == ".npz" and item.is_file():
            groups.append(item)
        elif item.is_dir() or item.is_file():
            found = _image_files(item) if item.is_dir() else [item]
            last = groups[-1] if groups else None
            if isinstance(last, list):
                last += found
            else:
                groups.append(found)
        else:
            raise InputError(f"{item}: no such file or directory")
    for group in groups:
        if isinstance(group, list):
            yield from _file_batches(group, spec, batch_size)
        else:
            yield from _npz_batches(group, spec, batch_size)


def _file_batches(files: list[Path], spec: InputSpec, batch_size: int) -> Iterator[tuple[list[str], np.ndarray]]:
    if not files:
        return
    # Resized as the training data was (the package records how), then centre-cropped.
    source = FolderSource(files, np.zeros(len(files), np.int64), spec.height, spec.file_resize)
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
