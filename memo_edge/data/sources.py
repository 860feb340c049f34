"""Image sources: the one interface training, herding and evaluation read images through.

Every source hands out uint8 HWC batches with int64 labels, so the model side never cares whether the
pixels live in memory (CIFAR, digits, npz, exemplars) or on disk (image folders, decoded on demand).
Sources are immutable: ``subset`` and ``with_labels`` return new sources, which keeps the label remapping
of a scenario from leaking into the dataset it came from.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from memo_edge.errors import InputError

__all__ = [
    "ImageSource", "ArraySource", "FolderSource", "ConcatSource", "concat_sources", "image_file_size", "warn_resized",
    "DEFAULT_AUGMENT", "eval_resize", "resize_center_crop",
]

log = logging.getLogger(__name__)

# Small on purpose: PIL releases the GIL while decoding, and a few threads keep a GPU fed without
# competing with the training process for every core of an edge board.
_MAX_DECODE_THREADS = 8


@runtime_checkable
class ImageSource(Protocol):
    labels: np.ndarray  # int64 [N]

    @property
    def image_shape(self) -> tuple[int, int, int]: ...  # (H, W, C)

    def __len__(self) -> int: ...

    def take(self, indices: np.ndarray) -> np.ndarray: ...  # uint8 [n, H, W, C], in the order given

    def subset(self, indices: np.ndarray) -> ImageSource: ...

    def with_labels(self, labels: np.ndarray) -> ImageSource: ...


def _as_labels(labels: np.ndarray, n: int, owner: str) -> np.ndarray:
    """Labels as int64 [n]; integer arrays only, so that float labels never get silently truncated."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise InputError(f"{owner}: expected {n} labels as a 1-D array, got shape {labels.shape}")
    if labels.size and labels.dtype.kind not in "iu":
        raise InputError(f"{owner}: labels must be integers, got dtype {labels.dtype}")
    return labels.astype(np.int64, copy=False)


def _as_indices(indices: np.ndarray, n: int) -> np.ndarray:
    """Indices as int64, checked against ``n``: a boolean mask or a stray negative index is a bug here."""
    idx = np.asarray(indices)
    if idx.size == 0:
        return np.zeros(0, np.int64)
    if idx.dtype.kind not in "iu" or idx.ndim != 1:
        raise TypeError(f"indices must be a 1-D integer array, got dtype {idx.dtype} and shape {idx.shape}")
    idx = idx.astype(np.int64, copy=False)
    if idx.min() < 0 or idx.max() >= n:
        raise IndexError(f"index out of range for a source of {n} images: [{idx.min()}, {idx.max()}]")
    return idx


@dataclass(frozen=True, eq=False)
class ArraySource:
    """Images held in memory as one uint8 [N, H, W, C] array."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        images = self.images
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            desc = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
            raise InputError(f"ArraySource: images must be uint8 [N,H,W,C], got {desc}")
        object.__setattr__(self, "labels", _as_labels(self.labels, len(images), "ArraySource"))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        h, w, c = self.images.shape[1:]
        return (int(h), int(w), int(c))

    def __len__(self) -> int:
        return len(self.images)

    def take(self, indices: np.ndarray) -> np.ndarray:
        return self.images[_as_indices(indices, len(self))]

    def subset(self, indices: np.ndarray) -> ArraySource:
        idx = _as_indices(indices, len(self))
        return ArraySource(self.images[idx], self.labels[idx])

    def with_labels(self, labels: np.ndarray) -> ArraySource:
        return ArraySource(self.images, labels)


class FolderSource:
    """Image files decoded on demand: ImageNet-sized data never has to fit in memory.

    Every image is converted to RGB, resized so its shorter side is ``resize_to`` (bilinear) and center
    cropped to ``image_size`` square: with resize_to = image_size * 256 / 224 this is the standard
    Resize(256) + CenterCrop(224) evaluation view, with the same rounding as torchvision.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: np.ndarray,
        image_size: int,
        resize_to: int,
        *,
        workers: int | None = None,
    ) -> None:
        if image_size < 1 or resize_to < image_size:
            raise InputError(f"FolderSource: need 1 <= image_size <= resize_to, got {image_size} and {resize_to}")
        self.paths: list[Path] = [Path(p) for p in paths]
        self.labels: np.ndarray = _as_labels(labels, len(self.paths), "FolderSource")
        self.image_size = int(image_size)
        self.resize_to = int(resize_to)
        self.workers = workers or min(_MAX_DECODE_THREADS, os.cpu_count() or 1)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"FolderSource({len(self)} images, image_size={self.image_size}, resize_to={self.resize_to})"

    def take(self, indices: np.ndarray) -> np.ndarray:
        idx = _as_indices(indices, len(self))
        out = np.empty((len(idx), *self.image_shape), np.uint8)
        paths = [self.paths[i] for i in idx]
        if len(paths) <= 1 or self.workers <= 1:
            for k, path in enumerate(paths):
                out[k] = self._decode(path)
            return out
        with ThreadPoolExecutor(max_workers=min(self.workers, len(paths))) as pool:
            for k, image in enumerate(pool.map(self._decode, paths)):
                out[k] = image
        return out

    def subset(self, indices: np.ndarray) -> FolderSource:
        idx = _as_indices(indices, len(self))
        return self._replace([self.paths[i] for i in idx], self.labels[idx])

    def with_labels(self, labels: np.ndarray) -> FolderSource:
        return self._replace(self.paths, labels)

    def _replace(self, paths: list[Path], labels: np.ndarray) -> FolderSource:
        return FolderSource(paths, labels, self.image_size, self.resize_to, workers=self.workers)

    def _decode(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as im:
                rgb = im.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise InputError(f"{path}: cannot read image ({exc})") from exc
        return resize_center_crop(rgb, self.resize_to, self.image_size)


def image_file_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file from its header: PIL opens lazily, no pixels are decoded."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: cannot read image ({exc})") from exc


def warn_resized(source: ImageSource, where: str, *, shown: int = 5) -> int:
    """Log one warning when image files of ``source`` are not already its input size; return how many.

    The rule: image files are resized the way the training data was (shorter side to ``resize_to``,
    centre crop), while arrays (npz) must match the input shape exactly, so only a ``FolderSource``
    can hold such images. Reads file headers only, and names an unreadable file before any work.
    """
    if not isinstance(source, FolderSource):
        return 0
    size = source.image_size
    sizes = Counter(image_file_size(p) for p in source.paths)
    other = sorted(((n, wh) for wh, n in sizes.items() if wh != (size, size)), reverse=True)
    count = sum(n for n, _ in other)
    if count:
        listed = ", ".join(f"{w}x{h} ({n})" for n, (w, h) in other[:shown]) + (", ..." if len(other) > shown else "")
        log.warning(
            "%s: %d of %d images are not %dx%d (width x height: %s); they are resized as the training data was: "
            "shorter side to %d, centre crop %dx%d", where, count, len(source), size, size, listed,
            source.resize_to, size, size,
        )
    return count


# The augmentation policy of data (and of runs and packages) that does not name one: the only kind there
# was at first, so older run headers and format-1 manifests mean it.
DEFAULT_AUGMENT = "cifar"


def eval_resize(size: int, augment: str) -> int:
    """The shorter side an image file is resized to before its centre crop of ``size`` (the one place
    of this rule): ``size`` for CIFAR-style data, stored at the input size; 256/224 of it for
    ImageNet-style data (torchvision's Resize(256) + CenterCrop(224) evaluation view)."""
    return size if augment == "cifar" else round(size * 256 / 224)


def resize_center_crop(im: Image.Image, resize_to: int, crop: int) -> np.ndarray:
    """Shorter side to ``resize_to``, then a centered ``crop`` square (torchvision's size arithmetic)."""
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(resize_to * long / short)
    new_w, new_h = (resize_to, new_long) if w <= h else (new_long, resize_to)
    im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    return np.asarray(im.crop((left, top, left + crop, top + crop)), dtype=np.uint8)


class ConcatSource:
    """Several sources read as one (e.g. new task images on disk + exemplars in memory).

    ``take`` dispatches each index to the part that holds it. ``index`` (optional) selects and orders
    positions of the concatenation, so ``subset`` never has to copy or decode anything.
    """

    def __init__(
        self,
        parts: Sequence[ImageSource],
        *,
        index: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> None:
        self.parts: tuple[ImageSource, ...] = tuple(parts)
        _check_same_shape(self.parts)
        sizes = np.array([len(p) for p in self.parts], np.int64)
        self._ends = np.cumsum(sizes)
        self._starts = self._ends - sizes
        total = int(self._ends[-1])
        self._index = None if index is None else _as_indices(index, total)
        n = total if self._index is None else len(self._index)
        if labels is None:
            all_labels = np.concatenate([p.labels for p in self.parts]).astype(np.int64, copy=False)
            labels = all_labels if self._index is None else all_labels[self._index]
        self.labels: np.ndarray = _as_labels(labels, n, "ConcatSource")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.parts[0].image_shape

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"ConcatSource({len(self)} images from {[type(p).__name__ for p in self.parts]})"

    def take(self, indices: np.ndarray) -> np.ndarray:
        idx = _as_indices(indices, len(self))
        positions = idx if self._index is None else self._index[idx]
        which = np.searchsorted(self._ends, positions, side="right")
        out = np.empty((len(positions), *self.image_shape), np.uint8)
        for part in np.unique(which):
            sel = which == part
            out[sel] = self.parts[part].take(positions[sel] - self._starts[part])
        return out

    def subset(self, indices: np.ndarray) -> ConcatSource:
        idx = _as_indices(indices, len(self))
        positions = idx if self._index is None else self._index[idx]
        return ConcatSource(self.parts, index=positions, labels=self.labels[idx])

    def with_labels(self, labels: np.ndarray) -> ConcatSource:
        return ConcatSource(self.parts, index=self._index, labels=labels)


def _check_same_shape(sources: Sequence[ImageSource]) -> None:
    if not sources:
        raise InputError("concat_sources: nothing to concatenate")
    shapes = {s.image_shape for s in sources}
    if len(shapes) > 1:
        raise InputError(f"concat_sources: images of different shapes {sorted(shapes)} cannot be mixed")


def concat_sources(sources: Sequence[ImageSource]) -> ImageSource:
    """One source over all of ``sources``, in order: a single array when every part is in memory."""
    sources = list(sources)
    _check_same_shape(sources)
    if len(sources) == 1:
        return sources[0]
    if all(isinstance(s, ArraySource) for s in sources):
        arrays = [s for s in sources if isinstance(s, ArraySource)]
        return ArraySource(np.concatenate([s.images for s in arrays]), np.concatenate([s.labels for s in arrays]))
    return ConcatSource(sources)
