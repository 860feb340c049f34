"""The package: what a user copies to the device. Read here; written by ``runtime/writer.py``.

Layout (a directory)::

    catalog.sqlite            versions: each version's manifest (JSON) and its exemplar rows
    <sha256>.onnx             graphs: trunk, branch-K, full, full-int8 (optional); named by content
    <sha256>.safetensors      head weights (classifier, read with numpy) and training weights (one
                              file per component: trunk, each branch, classifiers; one whole file
                              in packages written before)
    engines/<key>/            TensorRT engine cache: always safe to delete, rebuilt from the ONNX

Reading verifies what it uses: the format version (``runtime/formats.py``: an older one is migrated
in memory, a newer one refused), the manifest's own sha256, and for every file the name (plain,
inside the package, no link), size and sha256. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memo_edge.memory.codec import parse_codec
from memo_edge.memory.exemplars import ExemplarDecodeError, ExemplarSet
from memo_edge.runtime.catalog import CATALOG, catalog, current_version
from memo_edge.runtime.formats import FORMAT_VERSION, format_problem
from memo_edge.runtime.manifest import (
    INT8_ROLE,
    Budget,
    FileEntry,
    InputSpec,
    Manifest,
    PackageError,
    ReadOnlyPackageError,
    Role,
    check_name,
    read_manifest,
)
from memo_edge.utils.io import sha256_file

# The package's public names; the manifest and catalog modules hold the details.
__all__ = [
    "FORMAT_VERSION", "CATALOG", "INT8_ROLE", "Role", "PackageError", "ReadOnlyPackageError", "FileEntry",
    "InputSpec", "Budget", "Manifest", "PackageVersion", "open_package", "check_name", "exemplar_digest",
    "verify_file",
]


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
    unreadable = format_problem(None if fmt is None else fmt[0])
    if unreadable is not None:
        raise PackageError(f"{where}: {unreadable}")
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
