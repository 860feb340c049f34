"""The exemplar memory: uint8 images, their labels and their herding rank within the class.

The rank is what makes the quota rule cheap: a class shrunk to m exemplars keeps ranks 0..m-1 (a
herding prefix), so no features have to be recomputed when a new branch shrinks the quota.
Invariant checked on construction: within every class the ranks are exactly 0..count-1.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memo_edge.errors import InputError
from memo_edge.memory.herding import herding_order
from memo_edge.utils.checks import check_int
from memo_edge.utils.io import atomic_open

__all__ = ["ExemplarSet", "select_exemplars"]

_KEYS = ("images", "labels", "ranks")
_ZIP_MAGIC = b"PK\x03\x04"  # np.savez always writes at least one member, so never an empty zip
# What numpy and zipfile raise on a damaged, truncated or foreign file.
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def _check_image_shape(image_shape: tuple[int, ...]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"image shape must be (H, W, C) with positive sizes, got {image_shape!r}")
    return shape  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class ExemplarSet:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]
    ranks: np.ndarray  # int64 [N], herding rank within its class (0 = picked first)

    def __post_init__(self) -> None:
        images, labels, ranks = self.images, self.labels, self.ranks
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 array [N, H, W, C], got {_describe(images)}")
        _check_image_shape(images.shape[1:])
        for name, arr in (("labels", labels), ("ranks", ranks)):
            if not isinstance(arr, np.ndarray) or arr.dtype != np.int64 or arr.ndim != 1:
                raise ValueError(f"{name} must be an int64 array [N], got {_describe(arr)}")
            if len(arr) != len(images):
                raise ValueError(f"{name} has {len(arr)} entries for {len(images)} images")
        if len(labels) and (labels.min() < 0 or ranks.min() < 0):
            raise ValueError("labels and ranks must be >= 0")
        # Sorted by (label, rank), each class must read 0, 1, ..., count-1: a herding prefix.
        n = len(labels)
        if n:
            order = np.lexsort((ranks, labels))
            sorted_labels = labels[order]
            new_class = np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]
            class_start = np.maximum.accumulate(np.where(new_class, np.arange(n), 0))
            if not np.array_equal(ranks[order], np.arange(n) - class_start):
                raise ValueError(
                    "ranks within each class must be exactly 0..count-1 (a herding prefix)"
                )

    @classmethod
    def empty(cls, image_shape: tuple[int, int, int]) -> ExemplarSet:
        shape = _check_image_shape(image_shape)
        return cls(
            images=np.zeros((0, *shape), dtype=np.uint8),
            labels=np.zeros(0, dtype=np.int64),
            ranks=np.zeros(0, dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExemplarSet):
            return NotImplemented
        return all(
            a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
            for a, b in zip(
                (self.images, self.labels, self.ranks), (other.images, other.labels, other.ranks)
            )
        )

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside: not hashable

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        """Bytes of the images only: what the exemplars cost in the budget."""
        return int(self.images.nbytes)

    def classes(self) -> np.ndarray:
        return np.unique(self.labels)

    def counts(self) -> dict[int, int]:
        classes, counts = np.unique(self.labels, return_counts=True)
        return {int(c): int(n) for c, n in zip(classes, counts)}

    def reduce(self, per_class: int) -> ExemplarSet:
        """Keep the first ``per_class`` of every class in herding order (rank < per_class)."""
        per_class = check_int("per_class", per_class)
        keep = self.ranks < per_class
        return ExemplarSet(self.images[keep], self.labels[keep], self.ranks[keep])

    def extend(self, other: ExemplarSet) -> ExemplarSet:
        """Both sets together; a class may come from one side only (its ranks would collide)."""
        if other.image_shape != self.image_shape:
            raise ValueError(f"image shape {other.image_shape} does not match {self.image_shape}")
        shared = np.intersect1d(self.labels, other.labels)
        if len(shared):
            raise ValueError(f"classes already in the exemplar set: {shared.tolist()}")
        return ExemplarSet(
            images=np.concatenate([self.images, other.images]),
            labels=np.concatenate([self.labels, other.labels]),
            ranks=np.concatenate([self.ranks, other.ranks]),
        )

    def save(self, path: Path) -> None:
        """Write an uncompressed .npz (images, labels, ranks) atomically to exactly ``path``."""
        with atomic_open(path, "wb") as f:
            np.savez(f, images=self.images, labels=self.labels, ranks=self.ranks)

    @classmethod
    def load(cls, path: Path) -> ExemplarSet:
        """Read a file written by ``save``; anything else is an ``InputError`` naming the file."""
        path = Path(path)
        try:
            # Our own handle: numpy leaks the one it opens when the zip turns out to be damaged.
            with open(path, "rb") as f:
                # Checked first so a foreign file gets a plain answer, not numpy's pickle advice.
                if f.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
                    raise InputError(f"{path}: not an exemplar file (expected an .npz archive)")
                f.seek(0)
                with np.load(f, allow_pickle=False) as data:
                    keys = set(data.files)
                    if keys != set(_KEYS):
                        raise InputError(
                            f"{path}: exemplar file has keys {sorted(keys)}, expected {list(_KEYS)}"
                        )
                    # Members are read lazily: truncation and bad CRCs surface only here.
                    arrays = {key: data[key] for key in _KEYS}
        except FileNotFoundError:
            raise InputError(f"{path}: exemplar file not found") from None
        except _READ_ERRORS as e:
            raise InputError(f"{path}: unreadable exemplar file ({_one_line(e)})") from None
        try:
            return cls(**arrays)
        except ValueError as e:
            raise InputError(f"{path}: invalid exemplar file ({_one_line(e)})") from None


def select_exemplars(
    images: np.ndarray, labels: np.ndarray, features: np.ndarray, per_class: int
) -> ExemplarSet:
    """Herding per class: up to ``per_class`` images of every class in ``labels``, ranks 0..m-1.

    Classes come out in ascending label order, each in herding order over its own ``features`` rows.
    """
    per_class = check_int("per_class", per_class)
    images = np.asarray(images)
    labels = np.asarray(labels)
    features = np.asarray(features)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be a uint8 array [N, H, W, C], got {_describe(images)}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {_describe(labels)}")
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D [N, D], got shape {features.shape}")
    if not len(images) == len(labels) == len(features):
        raise ValueError(
            f"images, labels and features disagree in length: "
            f"{len(images)}, {len(labels)}, {len(features)}"
        )
    picked: list[np.ndarray] = []
    ranks: list[np.ndarray] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = herding_order(features[members], per_class)
        picked.append(members[order])
        ranks.append(np.arange(len(order), dtype=np.int64))
    if not picked:
        return ExemplarSet.empty(images.shape[1:])
    index = np.concatenate(picked)
    return ExemplarSet(
        images=images[index],
        labels=labels[index].astype(np.int64, copy=False),
        ranks=np.concatenate(ranks),
    )


def _describe(x: object) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} array of shape {x.shape}"
    return type(x).__name__


def _one_line(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
