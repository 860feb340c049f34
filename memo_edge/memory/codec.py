"""Exemplar codecs: the form an exemplar is stored in, and so what it costs in the byte budget.

``raw`` (the default, the paper's 3,072 B per CIFAR image), ``png`` (lossless), ``jpeg:Q`` and
``webp:Q`` (lossy, quality 1-100), the last three with Pillow's encoders. A lossy exemplar is used as
it decodes, so herding, training and NME see what the memory really holds. ``raw`` is a codec like the
others whose round trip is the identity: its stored form is the image's own bytes (``StoredForms``
views them without a copy), all of one fixed size (``fixed_size``), so callers take one path.

``jpeg:Q`` stores *abbreviated* JPEG streams: the quantization and Huffman tables (574 B, the same for
every image at a given quality) are left out of each exemplar and rebuilt from the codec spec when it
decodes. At 32x32 those tables would be more than half of every file. ``header_sha256`` fingerprints
them; stores record it, so a Pillow whose JPEG library builds other tables is refused, not misread.
Torch-free.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from memo_edge.errors import InvalidValue

__all__ = ["Codec", "CodecError", "RAW", "StoredForms", "parse_codec", "CODEC_HELP"]

CODEC_HELP = "raw, png, jpeg:Q or webp:Q (quality 1-100)"
_SPEC = re.compile(r"^(raw|png|jpeg|webp)(?::(\d{1,3}))?$")
_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"


class CodecError(ValueError):
    """A stored exemplar that does not decode to an image of the expected shape (``index``: its
    position, when it was one of many)."""

    index: int | None = None


@dataclass(frozen=True)
class Codec:
    name: str  # raw, png, jpeg or webp
    quality: int | None = None  # jpeg and webp only

    @property
    def spec(self) -> str:
        return self.name if self.quality is None else f"{self.name}:{self.quality}"

    def fixed_size(self, raw_bytes: int) -> int | None:
        """The bytes every exemplar is stored in when that is fixed, for images of ``raw_bytes`` (H x W x C):
        raw's own; None for an encoded size, which is known once an image is encoded."""
        return raw_bytes if self.name == "raw" else None

    @property
    def lossy(self) -> bool:
        return self.name in ("jpeg", "webp")

    def __str__(self) -> str:
        return self.spec

    def header_sha256(self, channels: int) -> str:
        """Fingerprint of what decoding adds to every stored exemplar ('' when nothing)."""
        header = _jpeg_tables(self.quality, channels) if self.name == "jpeg" else b""
        return hashlib.sha256(header).hexdigest() if header else ""

    def encode(self, image: np.ndarray) -> bytes:
        """One uint8 [H, W, C] image in this codec's stored form."""
        if self.name == "raw":
            return np.ascontiguousarray(image).tobytes()
        from PIL import Image

        buf = io.BytesIO()
        pil = Image.fromarray(_pil_array(image))
        if self.name == "png":
            pil.save(buf, format="PNG")
        elif self.name == "jpeg":
            pil.save(buf, format="JPEG", quality=self.quality, streamtype=2)  # 2: image only, no tables
        else:
            pil.save(buf, format="WEBP", quality=self.quality, method=6)
        data = buf.getvalue()
        return data[len(_SOI):] if self.name == "jpeg" else data  # every stream starts with SOI: not stored

    def decode(self, data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        """A stored exemplar back as a uint8 [H, W, C] image; CodecError if it is not one of ``shape``."""
        h, w, c = shape
        if self.name == "raw":
            if len(data) != h * w * c:
                raise CodecError(f"{len(data)} bytes, expected {h * w * c} for a raw {h}x{w}x{c} image")
            return np.frombuffer(data, np.uint8).reshape(shape).copy()
        from PIL import Image

        if self.name == "jpeg":
            data = _jpeg_tables(self.quality, c)[: -len(_EOI)] + data
        try:
            with Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[self.name]]) as pil:
                pil = pil.convert("L" if c == 1 else "RGB")
                array = np.asarray(pil, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as exc:  # what Pillow raises on damaged data
            raise CodecError(f"not a {self.spec} image ({type(exc).__name__}: {exc})") from None
        array = array.reshape(array.shape[0], array.shape[1], c)
        if array.shape != (h, w, c):
            raise CodecError(f"decodes to {array.shape}, expected {(h, w, c)}")
        return array

    def encode_many(self, images: np.ndarray) -> StoredForms:
        """The stored forms of uint8 [N, H, W, C] ``images`` (raw: a view of their bytes, no copy)."""
        if self.name == "raw":
            return StoredForms.of_pixels(np.asarray(images))
        return StoredForms([self.encode(image) for image in images])

    def decode_many(self, blobs: Sequence[bytes], shape: tuple[int, int, int]) -> np.ndarray:
        """uint8 [N, H, W, C]; a CodecError carries the ``index`` of the first blob that does not decode."""
        if self.name == "raw":
            if isinstance(blobs, StoredForms) and blobs.pixels is not None:  # a view: already the images
                return blobs.pixels
            joined = b"".join(blobs)
            if len(joined) == len(blobs) * int(np.prod(shape)):  # one copy instead of one per image
                return np.frombuffer(joined, np.uint8).reshape(len(blobs), *shape).copy()
        out = np.empty((len(blobs), *shape), np.uint8)
        for i, blob in enumerate(blobs):
            try:
                out[i] = self.decode(blob, shape)
            except CodecError as exc:
                exc.index = i
                raise
        return out

    def round_trip(self, images: np.ndarray) -> tuple[np.ndarray, StoredForms]:
        """(the images as this codec gives them back, their stored form); lossless ones come back as given."""
        forms = self.encode_many(images)
        return (self.decode_many(forms, images.shape[1:]) if self.lossy else np.asarray(images)), forms

    def stored_forms(self, images: np.ndarray, given: Sequence[bytes] | None = None) -> StoredForms:
        """What a set of ``images`` keeps as its stored forms: ``given`` (checked against the images), or,
        for a lossless codec, the images encoded here. Raw keeps a view of the images themselves."""
        shape = tuple(images.shape[1:])
        if given is not None:
            forms = given if isinstance(given, StoredForms) else StoredForms(given)
            if len(forms) != len(images):
                raise ValueError(f"encoded must hold one bytes object per image ({len(images)})")
            size, sizes = self.fixed_size(int(np.prod(shape))), forms.sizes()
            if size is not None and np.any(sizes != size):
                raise ValueError(f"a stored form of {int(sizes[np.argmax(sizes != size)])} B is not a {self} exemplar "
                                 f"of shape {shape} ({size} B): encoded forms need the codec they were encoded with")
            if size is None:  # encoded forms are kept; fixed-size ones are the images' own bytes, viewed below
                return forms
        elif self.lossy:
            raise ValueError(f"exemplars under {self} need their encoded forms: the images are what those decode to")
        return self.encode_many(images)


class StoredForms(Sequence[bytes]):
    """Exemplars as a codec stores them, one bytes object each, and their sizes (what the budget counts).

    Backed by the encoded bytes, or under raw by the images themselves (``pixels``: each form is that
    image's bytes, made on access), so raw exemplars are not held twice.
    """

    __slots__ = ("_blobs", "pixels")

    def __init__(self, blobs: Sequence[bytes] = ()) -> None:
        self._blobs = tuple(blobs)
        if not all(isinstance(b, bytes) for b in self._blobs):
            raise ValueError("stored forms must be bytes objects")
        self.pixels: np.ndarray | None = None

    @classmethod
    def of_pixels(cls, images: np.ndarray) -> StoredForms:
        forms = cls()
        forms.pixels = np.ascontiguousarray(images)
        return forms

    def __len__(self) -> int:
        return len(self.pixels) if self.pixels is not None else len(self._blobs)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return self.take(np.arange(len(self))[index])
        return self.pixels[index].tobytes() if self.pixels is not None else self._blobs[index]

    def __iter__(self) -> Iterator[bytes]:
        return (self[i] for i in range(len(self)))

    def sizes(self) -> np.ndarray:
        """int64 [N]: each form's bytes."""
        if self.pixels is not None:
            return np.full(len(self.pixels), int(np.prod(self.pixels.shape[1:])), np.int64)
        return np.fromiter((len(b) for b in self._blobs), np.int64, len(self._blobs))

    def take(self, indices: np.ndarray, images: np.ndarray | None = None) -> StoredForms:
        """The forms at ``indices``; ``images``: those rows' images, already taken (a raw view shares them)."""
        if self.pixels is not None:
            return StoredForms.of_pixels(self.pixels[indices] if images is None else images)
        return StoredForms([self._blobs[i] for i in np.asarray(indices, np.int64).tolist()])

    def concat(self, other: StoredForms, images: np.ndarray | None = None) -> StoredForms:
        """Both, in order; ``images``: the joined images (a raw view shares them)."""
        if self.pixels is not None and other.pixels is not None:
            return StoredForms.of_pixels(np.concatenate([self.pixels, other.pixels]) if images is None else images)
        return StoredForms([*self, *other])

    def joined(self) -> bytes:
        return self.pixels.tobytes() if self.pixels is not None else b"".join(self._blobs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredForms):
            return NotImplemented
        return np.array_equal(self.sizes(), other.sizes()) and self.joined() == other.joined()

    __hash__ = None  # type: ignore[assignment]


RAW = Codec("raw")


def parse_codec(spec: str) -> Codec:
    """``raw``, ``png``, ``jpeg:Q`` or ``webp:Q``; a ValueError says what is accepted."""
    match = _SPEC.match(str(spec).strip().lower())
    if match is None:
        raise InvalidValue(f"unknown exemplar codec {spec!r}; choose {CODEC_HELP}")
    name, quality = match.group(1), match.group(2)
    if name in ("jpeg", "webp"):
        if quality is None or not 1 <= int(quality) <= 100:
            raise InvalidValue(f"exemplar codec {spec!r}: {name} needs a quality from 1 to 100, e.g. {name}:75")
        return Codec(name, int(quality))
    if quality is not None:
        raise InvalidValue(f"exemplar codec {spec!r}: {name} takes no quality")
    return Codec(name)


@functools.lru_cache(maxsize=32)
def _jpeg_tables(quality: int | None, channels: int) -> bytes:
    """The tables-only JPEG stream libjpeg writes at ``quality`` (SOI, DQT, DHT, EOI)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_pil_array(np.zeros((8, 8, channels), np.uint8))).save(
        buf, format="JPEG", quality=quality, streamtype=1)
    return buf.getvalue()


def _pil_array(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"an exemplar codec takes uint8 [H, W, 1 or 3] images, got {image.dtype} {image.shape}")
    return image[:, :, 0] if image.shape[2] == 1 else image
