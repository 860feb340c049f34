"""Writing a package version: the one sequence that export (a new package) and update (one more version) share.

Commit protocol. A new package is assembled in a temp directory beside its place and renamed into
place whole. One more version is written under the package's writer lock (``runtime/lock.py``), held
from start to end: the package is checked and the current version opened once, new files are
written content-addressed (temp file, fsync, rename) next to the old ones, the new version is
verified on those files, then ONE SQLite transaction inserts the version, its budget and exemplar
rows and moves ``head``, after checking that the version it was derived from is still current. A
crash before the commit leaves the previous version current and intact (the new files are orphans,
removed by the next writer, or by this one when it fails); a crash after it leaves the new version
complete. Files of the last versions stay, so a reader that opened version N keeps a consistent view
while N+1 is committed. Torch-free.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from memo_edge.memory.exemplars import ExemplarSet
from memo_edge.runtime.catalog import (
    CATALOG, JOURNAL_MODE, SCHEMA, add_version, catalog, connect, crash_point, next_version,
)
from memo_edge.runtime.check import require_intact
from memo_edge.runtime.lock import writer_lock
from memo_edge.runtime.manifest import FORMAT_VERSION, FileEntry, Manifest, Role, check_name
from memo_edge.runtime.package import PackageVersion, exemplar_digest, verify_file
from memo_edge.runtime.versions import collect_garbage, remove_orphans
from memo_edge.utils.io import atomic_directory, atomic_write_bytes, sha256_file
from memo_edge.utils.phases import timed

__all__ = ["Blob", "Verify", "PackageWriter"]

log = logging.getLogger(__name__)
Verify = Callable[[PackageVersion], dict[str, Any]]  # checks a written version; its report goes into the manifest


class Blob(NamedTuple):
    """A file of a new version before it is stored: its bytes and what it is."""

    data: bytes
    role: Role
    ext: str  # ".onnx" or ".safetensors"
    task: int | None = None  # the task of a branch graph or of a branch's weights


class PackageWriter:
    """Writes one version of one package, all or nothing: open it with ``create`` or ``append``,
    call ``commit`` once inside the block."""

    def __init__(self, root: Path, current: PackageVersion | None, version: int) -> None:
        self.root = root  # where the files go (for a new package, its temp directory until the block ends)
        self.current = current  # the version an update learns from, opened and verified once; None: a new package
        self.version = version  # the new version's number: above every one ever kept (after a rollback too)
        self.parent = None if current is None else current.manifest.version  # must still be current at the commit
        self.committed: Manifest | None = None
        # Files whose sha256 was checked in this block: staging the same bytes again does not re-read them.
        self._verified = set() if current is None else {f.name for f in current.manifest.files}

    @classmethod
    @contextlib.contextmanager
    def create(cls, dest: Path) -> Iterator[PackageWriter]:
        """A new package at ``dest`` (version 1): nothing appears there unless the block commits and ends
        without an error; an existing tree at ``dest`` is replaced (the caller holds its lock)."""
        with atomic_directory(dest) as tmp:
            writer = cls(tmp, None, 1)
            yield writer
            if writer.committed is None:
                raise RuntimeError("PackageWriter.create: the block ended without a commit")
        writer.root = Path(dest)

    @classmethod
    @contextlib.contextmanager
    def append(cls, root: Path, command: str) -> Iterator[PackageWriter]:
        """One more version of the package at ``root``, under its writer lock (``command`` names the holder).

        A damaged package is refused before any work; what an earlier writer left behind is removed
        first, and this writer's files are removed if it fails. After a commit, versions beyond the
        last ones kept are dropped with the files only they used.
        """
        root = Path(root)
        with writer_lock(root, command):
            check = require_intact(root)  # the cheap check: a damaged catalog is refused before any work
            remove_orphans(root, check.manifests)  # what a killed or failed writer left behind
            current = PackageVersion(root, check.manifest(check.current))
            for entry in current.manifest.files:  # the version learned from, by sha256, once
                verify_file(root, entry)
            writer = cls(root, current, next_version(root))
            try:
                yield writer
                if writer.committed is not None:
                    collect_garbage(root, manifests=(*check.manifests, writer.committed))
            except BaseException:
                try:  # this writer's files, if it wrote any and did not commit (read back: it may have)
                    remove_orphans(root)
                except Exception as exc:  # never hide why the write failed; the next writer retries
                    log.warning("could not remove the files of the failed %s: %s", command, exc)
                raise

    @property
    def written(self) -> PackageVersion:
        """The committed version, where it is read from (for a new package: once the block has ended)."""
        if self.committed is None:
            raise RuntimeError("PackageWriter.written: nothing was committed")
        return PackageVersion(self.root, self.committed)

    @timed("commit")
    def commit(self, manifest: Manifest, exemplars: ExemplarSet, tasks: np.ndarray, *,
               blobs: Sequence[Blob] = (), keep: Sequence[FileEntry] = (), verify: Verify | None = None) -> Manifest:
        """Store ``blobs``, verify the version they make with ``keep`` (files of the current version),
        then commit it and its exemplars (the task of each row in ``tasks``) in one transaction.

        The writer fills in the manifest's number, parent, files, creation time, exemplar digest and
        format; ``verify``'s report becomes its verification, ``verify``'s exception aborts the write.
        """
        if self.committed is not None:
            raise RuntimeError("a PackageWriter commits one version")
        final = replace(manifest, version=self.version, parent=self.parent,
                        files=(*keep, *(self._stage(blob) for blob in blobs)),
                        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        exemplars_sha256=exemplar_digest(exemplars, tasks), format_version=FORMAT_VERSION)
        if verify is not None:
            final = replace(final, verification=verify(PackageVersion(self.root, final)))
        crash_point("files-written")
        if self.current is None:
            _new_catalog(self.root / CATALOG)
        with catalog(self.root, readonly=False) as conn:
            add_version(conn, final, exemplars, tasks)
        crash_point("after-commit")
        self.committed = final
        return final

    def kept_files(self, *, train_base: bool) -> list[FileEntry]:
        """The current version's files an update carries over unchanged (``Role.kept_by_update``)."""
        files = () if self.current is None else self.current.manifest.files
        return [f for f in files if f.role.kept_by_update(train_base=train_base)]

    def _stage(self, blob: Blob) -> FileEntry:
        """Write ``blob`` content-addressed (atomically), hashing its bytes once.

        A file already there with these bytes is kept, not rewritten (its inode, mtime and TensorRT
        engines stay): what an update does with the components it did not change. A damaged one
        (other size or sha256) is replaced.
        """
        digest = hashlib.sha256(blob.data).hexdigest()
        path = self.root / check_name(f"{digest}{blob.ext}")
        if path.name not in self._verified and not _holds(path, digest, len(blob.data)):
            atomic_write_bytes(path, blob.data)
        self._verified.add(path.name)
        return FileEntry(name=path.name, role=Role(blob.role), sha256=digest, size=len(blob.data), task=blob.task)


def _holds(path: Path, digest: str, size: int) -> bool:
    return path.is_file() and not path.is_symlink() and path.stat().st_size == size and sha256_file(path) == digest


def _new_catalog(path: Path) -> None:
    conn = connect(path, readonly=False)
    try:
        conn.execute(f"PRAGMA journal_mode = {JOURNAL_MODE}")
        conn.executescript(SCHEMA)
    finally:
        conn.close()
