"""The labelled images of ``POST /update``, unpacked into a directory ``memo-edge update --data`` reads.

Three body types: a zip or a tar (plain or compressed) of class folders (``<class>/<image>``, or one
top folder holding them), or an npz with ``x`` (uint8 [N,H,W,C]), ``y`` (labels 0..k-1) and
``class_names`` (k strings). Archives are unpacked member by member, never with ``extractall``: a
member with an absolute path, a ``..`` part, a link or a device is refused (the whole upload, with
its name), and the member count and unpacked bytes are bounded (a zip bomb is refused, not unpacked).
Every problem is a ``RequestError`` (4xx) with one line. Each upload gets its own directory beside
the package (``upload_dir``), named with the host and pid of the service, so that a service starting
later removes the ones a killed service left (``remove_stale_uploads``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import numpy as np

from memo_edge.serve.inputs import RequestError

__all__ = ["UploadLimits", "ZIP_TYPES", "TAR_TYPES", "NPZ_TYPES", "UPLOAD_TYPES", "unpack_upload", "upload_dir",
           "remove_stale_uploads"]

log = logging.getLogger(__name__)

ZIP_TYPES = ("application/zip", "application/x-zip-compressed")
TAR_TYPES = ("application/x-tar", "application/gzip", "application/x-gzip", "application/x-gtar",
             "application/x-bzip2", "application/x-xz")
NPZ_TYPES = ("application/x-npz",)
UPLOAD_TYPES = ZIP_TYPES + TAR_TYPES + NPZ_TYPES
_SKIPPED = {"__MACOSX"}  # what macOS's "Compress" adds beside the folders
_UPLOAD_PREFIX = ".memo-edge-upload-"
# then the host and the pid of the service that made it, then mkdtemp's random part (no "-" in it)
_UPLOAD_NAME = re.compile(re.escape(_UPLOAD_PREFIX) + r"(?P<host>.+)-(?P<pid>\d+)-[^-]*$")


@dataclass(frozen=True)
class UploadLimits:
    max_upload_bytes: int = 512 * 2**20
    max_unpacked_bytes: int = 2 * 2**30  # 4x the upload: image files do not compress much
    max_members: int = 200_000


@dataclass(frozen=True)
class _Member:
    name: str
    size: int
    open: Callable[[], IO[bytes] | None]


def upload_dir(package: Path) -> Path:
    """A new directory for one upload beside the package (same file system, the user's storage, not
    /tmp), named with this host and process so that ``remove_stale_uploads`` knows when it is left over."""
    try:
        prefix = f"{_UPLOAD_PREFIX}{socket.gethostname()}-{os.getpid()}-"
        return Path(tempfile.mkdtemp(prefix=prefix, dir=package.resolve().parent))
    except OSError as exc:
        code = "no_space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "read_only"
        raise RequestError(code, f"cannot store the upload beside the package in {package.resolve().parent} "
                           f"({exc.strerror})") from None


def remove_stale_uploads(package: Path) -> list[Path]:
    """Remove the upload directories beside ``package`` that a service of this host made and that
    outlived it (killed before it could clean up). A running service's, and another host's (storage
    shared over a network), are left alone. Returns what was removed."""
    removed, host = [], socket.gethostname()
    for path in package.resolve().parent.glob(f"{_UPLOAD_PREFIX}*"):
        match = _UPLOAD_NAME.match(path.name)
        if path.is_dir() and match and match["host"] == host and not _alive(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info("removed %d upload director%s left by a stopped service", len(removed), "y" if len(removed) == 1 else "ies")
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def unpack_upload(kind: str, upload: Path, into: Path, limits: UploadLimits) -> str:
    """Unpack ``upload`` (a body of content type ``kind``) into the new directory ``into``; returns the
    ``--data`` spec of ``memo-edge update`` that reads it."""
    into.mkdir()
    if kind in NPZ_TYPES:
        _write_npz_dataset(upload, into)
        return f"npz:{into}"
    with ExitStack() as stack:
        if kind in ZIP_TYPES:
            members = _zip_members(stack, upload, limits)
        elif kind in TAR_TYPES:
            members = _tar_members(stack, upload, limits)
        else:
            raise RequestError("unsupported_media", f"content-type {kind or 'missing'}: send a zip or tar of class "
                               f"folders ({', '.join(ZIP_TYPES + TAR_TYPES)}) or an npz with x, y and class_names "
                               f"({NPZ_TYPES[0]})")
        total = 0
        for member in members:
            total += member.size
            if total > limits.max_unpacked_bytes:
                raise RequestError("too_large", f"the archive unpacks to more than {limits.max_unpacked_bytes:,} bytes")
            _write_member(member, into, limits.max_unpacked_bytes - total + member.size)
    return str(_class_root(into))


def _safe_parts(name: str) -> tuple[str, ...]:
    """The member's path parts; refuses what could write outside the directory."""
    posix = name.replace("\\", "/")
    path = PurePosixPath(posix)
    if path.is_absolute() or (len(posix) > 1 and posix[1] == ":"):
        raise RequestError("bad_input", f"archive member {name!r}: absolute paths are refused")
    if ".." in path.parts:
        raise RequestError("bad_input", f"archive member {name!r}: '..' in a path is refused")
    return tuple(p for p in path.parts if p not in ("", "."))


def _zip_members(stack: ExitStack, upload: Path, limits: UploadLimits) -> Iterator[_Member]:
    try:
        archive = stack.enter_context(zipfile.ZipFile(upload))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise RequestError("bad_input", f"the body is not a readable zip archive ({exc})") from None
    if len(infos) > limits.max_members:
        raise RequestError("too_large", f"the archive has {len(infos):,} members; at most {limits.max_members:,}")
    for info in infos:
        _safe_parts(info.filename)
        kind = (info.external_attr >> 16) & 0o170000
        if kind == 0o120000:
            raise RequestError("bad_input", f"archive member {info.filename!r}: links are refused")
        if kind not in (0, 0o100000, 0o040000):
            raise RequestError("bad_input", f"archive member {info.filename!r}: only files and folders are accepted")
    for info in infos:
        if not info.is_dir():
            yield _Member(info.filename, info.file_size, lambda info=info: archive.open(info))


def _tar_members(stack: ExitStack, upload: Path, limits: UploadLimits) -> Iterator[_Member]:
    try:
        archive = stack.enter_context(tarfile.open(upload, mode="r:*"))
        infos = []
        for info in archive:  # read the headers one by one, so a huge member count stops early
            infos.append(info)
            if len(infos) > limits.max_members:
                raise RequestError("too_large", f"the archive has more than {limits.max_members:,} members")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise RequestError("bad_input", f"the body is not a readable tar archive ({exc})") from None
    for info in infos:
        _safe_parts(info.name)
        if info.issym() or info.islnk():
            raise RequestError("bad_input", f"archive member {info.name!r}: links are refused")
        if not (info.isfile() or info.isdir()):
            raise RequestError("bad_input", f"archive member {info.name!r}: only files and folders are accepted")
    for info in infos:
        if info.isfile():
            yield _Member(info.name, info.size, lambda info=info: archive.extractfile(info))


def _write_member(member: _Member, into: Path, budget: int) -> None:
    parts = _safe_parts(member.name)
    if not parts or parts[0] in _SKIPPED:
        return
    target = into.joinpath(*parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with member.open() as src, open(target, "xb") as dst:  # type: ignore[union-attr]
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > budget:  # a header that understates the size
                    raise RequestError("too_large", f"archive member {member.name!r} unpacks to more than it declares")
                dst.write(chunk)
    except FileExistsError:
        raise RequestError("bad_input", f"archive member {member.name!r} appears twice") from None
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:  # a CRC error, a truncated body
        raise RequestError("bad_input", f"archive member {member.name!r} cannot be read ({exc})") from None


def _class_root(into: Path) -> Path:
    """The folder holding the class folders: ``into`` itself, or its only folder when the archive
    wrapped them in one (zipping a folder does)."""
    entries = [p for p in into.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        inner = [p for p in entries[0].iterdir() if not p.name.startswith(".")]
        if inner and all(p.is_dir() for p in inner):
            return entries[0]
    if not any(p.is_dir() for p in entries):
        raise RequestError("bad_input", "the archive holds no class folders: put each new class's images in a folder "
                           "named after the class (<class>/<image>)")
    return into


def _write_npz_dataset(upload: Path, into: Path) -> None:
    """An uploaded npz as the npz dataset format (``train-00.npz`` + ``meta.json``)."""
    try:
        with np.load(upload, allow_pickle=False) as data:
            missing = {"x", "y", "class_names"} - set(data.files)
            if missing:
                raise RequestError("bad_input", f"the npz holds {sorted(data.files)}; an update needs x (uint8 images "
                                   "[N,H,W,C]), y (labels 0..k-1) and class_names (k strings)")
            x, y, names = data["x"], data["y"], data["class_names"]
    except RequestError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise RequestError("bad_input", f"the body is not a readable npz ({exc})") from None
    if x.dtype != np.uint8 or x.ndim != 4:
        raise RequestError("bad_input", f"x is {x.dtype} {list(x.shape)}; expected uint8 [N,H,W,C]")
    if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
        raise RequestError("bad_input", f"y is {y.dtype} {list(y.shape)}; expected {len(x)} integer labels")
    if names.ndim != 1 or names.dtype.kind != "U":
        raise RequestError("bad_input", f"class_names is {names.dtype} {list(names.shape)}; expected a list of strings")
    if len(y) and (y.min() < 0 or y.max() >= len(names)):
        raise RequestError("bad_input", f"y holds labels {int(y.min())}..{int(y.max())}; expected 0..{len(names) - 1} "
                           f"({len(names)} class names)")
    files = []
    for split, (xs, ys) in {"train": (x, y), "test": (x[:0], y[:0])}.items():  # no test split on the device
        path = into / f"{split}-00.npz"
        np.savez(path, x=xs, y=ys.astype(np.int64))
        files.append({"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    (into / "meta.json").write_text(json.dumps({"class_names": names.tolist(), "files": files}))
