"""The exemplar memory: uint8 images, their labels and their herding rank within the class.

The rank is what makes the quota rule cheap: a class shrunk to m exemplars keeps ranks 0..m-1 (a
herding prefix), so no features have to be recomputed when a new branch shrinks the quota.
Invariant checked on construction: within every class the ranks are exactly 0..count-1.

The set also holds each exemplar's stored form under its codec (``memory/codec.py``): ``images`` are
what it decodes to (what the model sees), ``encoded`` what is kept and counted. Under raw the two are
the same bytes, held once.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memo_edge.errors import InputError
from memo_edge.memory.codec import RAW, Codec, CodecError, StoredForms, parse_codec
from memo_edge.memory.herding import herding_order
from memo_edge.utils.checks import check_int
from memo_edge.utils.io import atomic_open

__all__ = ["ExemplarSet", "ExemplarDecodeError", "select_exemplars"]

_KEYS = ("images", "labels", "ranks")  # a raw set's file, as before codecs existed
_ENCODED_KEYS = ("blobs", "offsets", "labels", "ranks", "codec", "image_shape", "codec_header")
_ZIP_MAGIC = b"PK\x03\x04"  # np.savez always writes at least one member, so never an empty zip
# What numpy and zipfile raise on a damaged, truncated or foreign file.
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


class ExemplarDecodeError(CodecError):
    """A stored exemplar that does not decode, with its label and rank."""

    def __init__(self, label: int, rank: int, problem: str) -> None:
        super().__init__(f"exemplar {rank} of label {label}: {problem}")
        self.label, self.rank, self.problem = label, rank, problem


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
    encoded: StoredForms | Sequence[bytes] | None = None  # StoredForms once built (None: the codec encodes)
    codec: Codec = RAW

    def __post_init__(self) -> None:
        images, labels, ranks = self.images, self.labels, self.ranks
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 array [N, H, W, C], got {_describe(images)}")
        _check_image_shape(images.shape[1:])
        object.__setattr__(self, "encoded", self.codec.stored_forms(images, self.encoded))
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
    def empty(cls, image_shape: tuple[int, int, int], codec: Codec = RAW) -> ExemplarSet:
        shape = _check_image_shape(image_shape)
        return cls(
            images=np.zeros((0, *shape), dtype=np.uint8),
            labels=np.zeros(0, dtype=np.int64),
            ranks=np.zeros(0, dtype=np.int64),
            encoded=(),
            codec=codec,
        )

    @classmethod
    def from_stored(cls, blobs: list[bytes], labels: np.ndarray, ranks: np.ndarray, codec: Codec,
                    image_shape: tuple[int, int, int]) -> ExemplarSet:
        """A set from its stored forms (decoded here); CodecError names the first row that does not decode."""
        shape = _check_image_shape(image_shape)
        try:
            images = codec.decode_many(blobs, shape)
        except CodecError as exc:
            i = exc.index
            raise ExemplarDecodeError(int(labels[i]), int(ranks[i]), str(exc)) from None
        return cls(images, labels, ranks, blobs, codec)

    def __len__(self) -> int:
        return len(self.labels)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExemplarSet):
            return NotImplemented
        return self.codec == other.codec and self.encoded == other.encoded and all(
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
        """Bytes of the stored images only (encoded under a codec): what the exemplars cost in the budget."""
        return int(self.sizes.sum())

    @property
    def sizes(self) -> np.ndarray:
        """int64 [N]: each exemplar's stored bytes."""
        return self.encoded.sizes()

    def stored(self) -> list[bytes]:
        """Each exemplar as it is stored (under raw: its pixels)."""
        return list(self.encoded)

    def _select(self, keep: np.ndarray) -> ExemplarSet:
        images = self.images[keep]
        return ExemplarSet(images, self.labels[keep], self.ranks[keep],
                           self.encoded.take(np.flatnonzero(keep), images), self.codec)

    def classes(self) -> np.ndarray:
        return np.unique(self.labels)

    def counts(self) -> dict[int, int]:
        classes, counts = np.unique(self.labels, return_counts=True)
        return {int(c): int(n) for c, n in zip(classes, counts)}

    def reduce(self, per_class: int) -> ExemplarSet:
        """Keep the first ``per_class`` of every class in herding order (rank < per_class)."""
        per_class = check_int("per_class", per_class)
        return self._select(self.ranks < per_class)

    def fit(self, class_bytes: int) -> ExemplarSet:
        """Keep of every class the longest herding prefix whose stored bytes total at most ``class_bytes``.

        Under raw this is ``reduce(class_bytes // bytes per image)``.
        """
        class_bytes = check_int("class_bytes", class_bytes)
        return self._select(_prefix_mask(self.labels, self.ranks, self.sizes, class_bytes))

    def extend(self, other: ExemplarSet) -> ExemplarSet:
        """Both sets together; a class may come from one side only (its ranks would collide)."""
        if other.image_shape != self.image_shape:
            raise ValueError(f"image shape {other.image_shape} does not match {self.image_shape}")
        if other.codec != self.codec:
            raise ValueError(f"exemplars stored as {other.codec} cannot join a set stored as {self.codec}")
        shared = np.intersect1d(self.labels, other.labels)
        if len(shared):
            raise ValueError(f"classes already in the exemplar set: {shared.tolist()}")
        images = np.concatenate([self.images, other.images])
        return ExemplarSet(
            images=images,
            labels=np.concatenate([self.labels, other.labels]),
            ranks=np.concatenate([self.ranks, other.ranks]),
            encoded=self.encoded.concat(other.encoded, images),
            codec=self.codec,
        )

    def save(self, path: Path) -> None:
        """Write an uncompressed .npz atomically to exactly ``path``.

        Raw: (images, labels, ranks), the file exemplar sets had before codecs. Under a codec: the stored
        forms joined into ``blobs`` with their ``offsets``, the codec's spec, the image shape and the
        codec's header fingerprint; no pixels.
        """
        with atomic_open(path, "wb") as f:
            if self.codec == RAW:  # its stored forms are the images: the pre-codec file, byte for byte
                np.savez(f, images=self.images, labels=self.labels, ranks=self.ranks)
                return
            offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
            np.savez(f, blobs=np.frombuffer(self.encoded.joined(), np.uint8), offsets=offsets, labels=self.labels,
                     ranks=self.ranks, codec=np.array(self.codec.spec),
                     image_shape=np.array(self.image_shape, np.int64),
                     codec_header=np.array(self.codec.header_sha256(self.image_shape[2])))

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
                    expected = next((k for k in (_KEYS, _ENCODED_KEYS) if keys == set(k)), None)
                    if expected is None:
                        raise InputError(
                            f"{path}: exemplar file has keys {sorted(keys)}, expected {list(_KEYS)} "
                            f"or {list(_ENCODED_KEYS)}"
                        )
                    # Members are read lazily: truncation and bad CRCs surface only here.
                    arrays = {key: data[key] for key in expected}
        except FileNotFoundError:
            raise InputError(f"{path}: exemplar file not found") from None
        except _READ_ERRORS as e:
            raise InputError(f"{path}: unreadable exemplar file ({_one_line(e)})") from None
        try:
            return cls(**arrays) if "images" in arrays else _from_npz(arrays)
        except ValueError as e:  # CodecError too: it names the exemplar that does not decode
            raise InputError(f"{path}: invalid exemplar file ({_one_line(e)})") from None


def _from_npz(arrays: dict[str, np.ndarray]) -> ExemplarSet:
    codec = parse_codec(str(arrays["codec"]))
    shape = _check_image_shape(tuple(int(s) for s in arrays["image_shape"]))
    if str(arrays["codec_header"]) != codec.header_sha256(shape[2]):
        raise ValueError(f"this Pillow's {codec} tables differ from those the exemplars were written with")
    blob, offsets = arrays["blobs"], arrays["offsets"]
    if blob.dtype != np.uint8 or offsets.dtype != np.int64 or len(offsets) != len(arrays["labels"]) + 1 \
            or offsets[0] != 0 or offsets[-1] != len(blob) or np.any(np.diff(offsets) < 0):
        raise ValueError("blobs and offsets do not agree")
    data = blob.tobytes()
    blobs = [data[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    return ExemplarSet.from_stored(blobs, arrays["labels"], arrays["ranks"], codec, shape)


def select_exemplars(
    images: np.ndarray, labels: np.ndarray, features: np.ndarray, per_class: int | None = None, *,
    class_bytes: int | None = None, encoded: Sequence[bytes] | None = None, codec: Codec = RAW,
) -> ExemplarSet:
    """Herding per class: every class in ``labels`` keeps a herding prefix, ranks 0..m-1.

    The prefix is as long as ``per_class`` exemplars and as ``class_bytes`` stored bytes allow
    (whichever binds; at least one must be given). ``encoded``: each image's stored form under
    ``codec`` (then ``images`` are their decoded forms, which ``features`` were computed on); None
    for a lossless codec (raw: the images' own bytes).
    Classes come out in ascending label order, each in herding order over its own ``features`` rows.
    """
    if per_class is None and class_bytes is None:
        raise ValueError("give per_class, class_bytes or both")
    per_class = None if per_class is None else check_int("per_class", per_class)
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
    forms = codec.stored_forms(images, encoded)
    sizes = forms.sizes()
    picked: list[np.ndarray] = []
    ranks: list[np.ndarray] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        steps = len(members) if per_class is None else per_class
        if class_bytes is not None:  # no prefix can be longer than the budget over the smallest image
            steps = min(steps, class_bytes // int(sizes[members].min()))
        order = herding_order(features[members], steps)
        if class_bytes is not None:
            order = order[: _fitting_prefix(sizes[members][order], class_bytes)]
        picked.append(members[order])
        ranks.append(np.arange(len(order), dtype=np.int64))
    if not picked:
        return ExemplarSet.empty(images.shape[1:], codec)
    index = np.concatenate(picked)
    chosen = images[index]
    return ExemplarSet(
        images=chosen,
        labels=labels[index].astype(np.int64, copy=False),
        ranks=np.concatenate(ranks),
        encoded=forms.take(index, chosen),
        codec=codec,
    )


def _prefix_mask(labels: np.ndarray, ranks: np.ndarray, sizes: np.ndarray, class_bytes: int) -> np.ndarray:
    """Rows within their class's longest rank prefix whose sizes sum to at most ``class_bytes``."""
    keep = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[np.argsort(ranks[members])]
        keep[members[: _fitting_prefix(sizes[members], class_bytes)]] = True
    return keep


def _fitting_prefix(sizes: np.ndarray, class_bytes: int) -> int:
    """How many of ``sizes`` (in herding order) fit in ``class_bytes`` together: the byte rule's cut."""
    return int(np.searchsorted(np.cumsum(sizes), class_bytes, side="right"))


def _describe(x: object) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} array of shape {x.shape}"
    return type(x).__name__


def _one_line(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
