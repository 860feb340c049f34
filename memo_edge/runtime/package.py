"""The package: what a user copies to the device. Shared by export (writes) and runtime (reads).

Layout (a directory)::

    catalog.sqlite            versions: each version's manifest (JSON) and its exemplar rows
    <sha256>.onnx             graphs: trunk, branch-K, full, full-int8 (optional); named by content
    <sha256>.safetensors      head weights (classifier, read with numpy) and training weights (one
                              file per component: trunk, each branch, classifiers; one whole file
                              in packages written before)
    engines/<key>/            TensorRT engine cache: always safe to delete, rebuilt from the ONNX

Reading verifies what it uses: the format version, the manifest's own sha256, and for every file
the name (plain, inside the package, no link), size and sha256. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from memo_edge.memory.codec import parse_codec
from memo_edge.memory.exemplars import ExemplarDecodeError, ExemplarSet
from memo_edge.runtime.catalog import (
    CATALOG,
    SCHEMA,
    JOURNAL_MODE,
    add_version,
    catalog,
    connect,
    current_version,
    transaction,
)
from memo_edge.runtime.manifest import (
    FORMAT_VERSION,
    INT8_ROLE,
    Budget,
    FileEntry,
    InputSpec,
    Manifest,
    PackageError,
    ReadOnlyPackageError,
    check_name,
    read_manifest,
)
from memo_edge.utils.io import atomic_directory, atomic_write_bytes, sha256_file

# The package's public names; the manifest and catalog modules hold the details.
__all__ = [
    "FORMAT_VERSION", "CATALOG", "INT8_ROLE", "PackageError", "ReadOnlyPackageError", "FileEntry", "InputSpec",
    "Budget", "Manifest", "PackageVersion", "open_package", "write_package", "store_file", "check_name",
    "exemplar_digest", "verify_file",
]


def store_file(root: Path, data: bytes, role: str, ext: str, task: int | None = None) -> FileEntry:
    """Write ``data`` content-addressed into ``root`` (atomically).

    An existing identical file is kept, not rewritten (its inode, mtime and TensorRT engines stay):
    what an update does with the files of the components it did not change. A damaged one (other
    size or sha256) is replaced.
    """
    digest = hashlib.sha256(data).hexdigest()
    path = root / check_name(f"{digest}{ext}")
    if not (path.is_file() and not path.is_symlink() and path.stat().st_size == len(data)
            and sha256_file(path) == digest):
        atomic_write_bytes(path, data)
    name = path.name
    return FileEntry(name=name, role=role, sha256=digest, size=len(data), task=task)


def exemplar_digest(exemplars: ExemplarSet, tasks: np.ndarray) -> str:
    """sha256 over the exemplar rows in (label, rank) order, recorded in the manifest's budget check.

    Rows are hashed as stored: raw pixels, or their encoded form under a codec."""
    return _rows_digest(exemplars.labels, exemplars.ranks, tasks, exemplars.stored())


def _rows_digest(labels: np.ndarray, ranks: np.ndarray, tasks: np.ndarray, blobs: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for i in np.lexsort((ranks, labels)):
        h.update(struct.pack("<qqq", int(labels[i]), int(ranks[i]), int(tasks[i])))
        h.update(blobs[i])
    return h.hexdigest()


# -- writing ----------------------------------------------------------------------------------------


def write_package(
    dest: Path,
    manifest: Manifest,
    blobs: Sequence[tuple[bytes, str, str, int | None]],
    exemplars: ExemplarSet,
    tasks: np.ndarray,
    *,
    verify: Callable[[PackageVersion], dict[str, Any]] | None = None,
) -> Manifest:
    """Write a new package (version ``manifest.version``) at ``dest``, all or nothing.

    ``blobs`` are (data, role, extension, task); their entries replace ``manifest.files``. The package
    is assembled in a temp directory beside ``dest``; ``verify`` runs on the files there (its report
    goes into the manifest, its exception aborts the export), then the directory is renamed into place.
    """
    with atomic_directory(dest) as tmp:
        files = tuple(store_file(tmp, data, role, ext, task) for data, role, ext, task in blobs)
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        final = replace(manifest, files=files, created=created, exemplars_sha256=exemplar_digest(exemplars, tasks))
        if verify is not None:
            final = replace(final, verification=verify(PackageVersion(tmp, final)))
        conn = connect(tmp / CATALOG, readonly=False)
        try:
            conn.execute(f"PRAGMA journal_mode = {JOURNAL_MODE}")
            conn.executescript(SCHEMA)
            with transaction(conn):
                conn.execute("INSERT INTO meta VALUES ('format_version', ?)", (str(FORMAT_VERSION),))
            add_version(conn, final, exemplars, tasks)
        finally:
            conn.close()
    return final


# -- reading ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackageVersion:
    """One version of a package, read and verified."""

    root: Path
    manifest: Manifest

    def path(self, entry: FileEntry) -> Path:
        return self.root / entry.name

    def exemplars(self) -> tuple[ExemplarSet, np.ndarray]:
        """The version's exemplar set and the task of each row."""
        with catalog(self.root) as conn:
            rows = conn.execute("SELECT label, rank, task, image FROM exemplars WHERE version = ? ORDER BY label, rank",
                                (self.manifest.version,)).fetchall()
        shape = self.manifest.input.shape
        try:
            codec = parse_codec(self.manifest.budget.codec)
        except ValueError as exc:  # manifests are checked when read; this is for one built by hand
            raise PackageError(f"{self.root / CATALOG}: version {self.manifest.version}: {exc}") from None
        if not rows:
            exemplars, tasks = ExemplarSet.empty(shape, codec), np.zeros(0, np.int64)
            if exemplar_digest(exemplars, tasks) != self.manifest.exemplars_sha256:
                raise PackageError(f"{self.root / CATALOG}: exemplars of version {self.manifest.version} are missing")
            return exemplars, tasks
        labels, ranks, tasks = (np.array([r[i] for r in rows], np.int64) for i in range(3))
        blobs = [bytes(r[3]) for r in rows]
        digest = _rows_digest(labels, ranks, tasks, blobs)
        problem = ""
        try:
            exemplars = ExemplarSet.from_stored(blobs, labels, ranks, codec, shape)
        except ExemplarDecodeError as exc:  # names the row; a damaged one that still decodes fails the digest
            names = self.manifest.class_names
            name = f"class {names[exc.label]!r}" if 0 <= exc.label < len(names) else f"label {exc.label}"
            problem = f"; exemplar {exc.rank} of {name} does not decode as {codec}: {exc.problem}"
        if digest != self.manifest.exemplars_sha256 or problem:
            raise PackageError(f"{self.root / CATALOG}: exemplars of version {self.manifest.version} are damaged "
                               f"(sha256 {digest[:16]}..., expected {self.manifest.exemplars_sha256[:16]}...){problem}")
        return exemplars, tasks


def open_package(root: Path, *, version: int | None = None, verify: bool = True) -> PackageVersion:
    """Open ``root`` at its current (or the given) version; verify every file the version lists."""
    root = Path(root)
    with catalog(root) as conn:
        fmt = conn.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()
        if version is None:
            version = current_version(conn)
        found = conn.execute("SELECT manifest, manifest_sha256 FROM versions WHERE version = ?", (version,)).fetchone()
    where = root / CATALOG
    if fmt is None or fmt[0] != str(FORMAT_VERSION):
        raise PackageError(f"{where}: package format {None if fmt is None else fmt[0]!r}, expected {FORMAT_VERSION}")
    if found is None:
        raise PackageError(f"{where}: no version {version}")
    manifest = read_manifest(where, version, *found)
    for entry in manifest.files:
        if verify:
            verify_file(root, entry)
    return PackageVersion(root, manifest)


def verify_file(root: Path, entry: FileEntry) -> None:
    """Refuse a missing, linked, resized or altered file, saying which, what was expected and found."""
    path = root / check_name(entry.name)
    if path.is_symlink():
        raise PackageError(f"{path}: is a symbolic link; package files must be plain files")
    if not path.is_file():
        raise PackageError(f"{path}: missing ({entry.role} file listed in the manifest)")
    size = path.stat().st_size
    if size != entry.size:
        raise PackageError(f"{path}: size {size} B, expected {entry.size} B ({entry.role})")
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise PackageError(f"{path}: sha256 {digest}, expected {entry.sha256} ({entry.role})")
