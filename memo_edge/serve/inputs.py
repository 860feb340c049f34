"""Request bodies to uint8 image batches: .npy/.npz arrays, or image files of a multipart form.

Arrays are never resized (they must match the package's input shape, as ``Runtime.predict`` requires);
image files are decoded with PIL and resized as ``memo-edge predict`` reads them (shorter side to the
package's ``file_resize``, centre crop). Every problem is a ``RequestError`` with a status and one line.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from memo_edge.data.sources import resize_center_crop  # the one resize rule of image files
from memo_edge.errors import MemoEdgeError, http_status
from memo_edge.runtime.package import InputSpec
from memo_edge.runtime.predict import as_image_batch

__all__ = ["Limits", "RequestError", "ARRAY_TYPES", "decode_array", "decode_images"]

ARRAY_TYPES = ("application/octet-stream", "application/x-npy", "application/x-npz")


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 * 2**20
    max_images: int = 256
    max_pixels: int = 40_000_000  # per image file, before resizing (a decompression bomb is refused)


class RequestError(MemoEdgeError):
    """A request the service refuses: a code of ``memo_edge.errors.CODES`` (its HTTP status from there)
    and one line for the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)

    @property
    def status(self) -> int:
        return http_status(self.code)


def _check(x: np.ndarray, spec: InputSpec, limits: Limits) -> np.ndarray:
    if x.ndim >= 1 and len(x) > limits.max_images:
        raise RequestError("too_large", f"{len(x)} images in one request; at most {limits.max_images}")
    x = as_image_batch(x, spec)  # an InputError: bad_input, 400
    if len(x) == 0:
        raise RequestError("bad_input", "no images in the request")
    return x


def decode_array(body: bytes, spec: InputSpec, limits: Limits) -> np.ndarray:
    """An .npy array, or an .npz with key ``x``: uint8 [N,H,W,C] (or float [N,C,H,W] in 0..1)."""
    try:
        data = np.load(io.BytesIO(body), allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                if "x" not in data.files:
                    raise RequestError("bad_input", f"the npz holds {sorted(data.files)}; send the images as 'x'")
                data = data["x"]
    except RequestError:
        raise
    except (OSError, ValueError, EOFError, KeyError) as exc:
        raise RequestError("bad_input", f"the body is not a .npy or .npz array of images ({exc})") from None
    return _check(data, spec, limits)


def decode_images(files: list[tuple[str, bytes]], spec: InputSpec, limits: Limits) -> np.ndarray:
    """Image files (name, bytes), resized as the package reads image files; RGB only."""
    if not files:
        raise RequestError("bad_input", "no image files: send them as multipart field 'file' (repeatable)")
    if len(files) > limits.max_images:
        raise RequestError("too_large", f"{len(files)} images in one request; at most {limits.max_images}")
    out = np.empty((len(files), spec.height, spec.width, 3), np.uint8)
    for k, (name, data) in enumerate(files):
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > limits.max_pixels:
                    raise RequestError("too_large",
                                       f"{name}: {im.width}x{im.height} pixels; at most {limits.max_pixels:,}")
                out[k] = resize_center_crop(im.convert("RGB"), spec.file_resize, spec.height)
        except RequestError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise RequestError("bad_input", f"{name}: cannot read image ({exc})") from None
    return _check(out, spec, limits)
