"""Package versions on the device: append one (an update), roll back, collect garbage.

Commit protocol: the writer holds the package's writer lock (``runtime/lock.py``) from start to end.
New files are written content-addressed (temp file, fsync, rename) next to the old ones, then ONE
SQLite transaction inserts the version, its budget and exemplar rows and moves ``head``, after
checking that the version it was derived from is still current. A crash before the commit leaves the
previous version current and intact (the new files are orphans, removed by the next writer); a crash
after it leaves the new version complete. Files of the last versions stay, so a reader that opened
version N keeps a consistent view while N+1 is committed.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from memo_edge.memory.exemplars import ExemplarSet
from memo_edge.runtime.check import require_intact
from memo_edge.runtime.lock import writer_lock
from memo_edge.runtime.catalog import add_version, catalog, crash_point, current_version, transaction
from memo_edge.runtime.manifest import FileEntry, Manifest, PackageError
from memo_edge.runtime.package import PackageVersion, exemplar_digest, open_package, store_file

__all__ = ["VersionInfo", "list_versions", "append_version", "rollback", "collect_garbage", "remove_orphans",
           "KEEP_VERSIONS"]

log = logging.getLogger(__name__)
KEEP_VERSIONS = 2
_PACKAGE_SUFFIXES = (".onnx", ".safetensors")


@dataclass(frozen=True)
class VersionInfo:
    version: int
    parent: int | None
    created: str
    current: bool


def list_versions(root: Path) -> list[VersionInfo]:
    with catalog(root) as conn:
        head = current_version(conn)
        rows = conn.execute("SELECT version, parent, created FROM versions ORDER BY version").fetchall()
    return [VersionInfo(v, p, c, v == head) for v, p, c in rows]


def _current(root: Path, versions: Sequence[VersionInfo]) -> VersionInfo:
    current = next((v for v in versions if v.current), None)
    if current is None:
        raise PackageError(f"{root}: the catalog names no current version that it keeps")
    return current


def append_version(
    root: Path,
    manifest: Manifest,
    blobs: Sequence[tuple[bytes, str, str, int | None]],
    kept: Sequence[FileEntry],
    exemplars: ExemplarSet,
    tasks: np.ndarray,
    *,
    verify: Callable[[PackageVersion], dict[str, Any]] | None = None,
) -> PackageVersion:
    """Write ``blobs``, verify the new version, then commit it (and its exemplars) in one transaction.

    The caller holds the writer lock; ``manifest.parent`` must be the current version at the commit.
    """
    files = tuple(kept) + tuple(store_file(root, data, role, ext, task) for data, role, ext, task in blobs)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    final = replace(manifest, files=files, created=created, exemplars_sha256=exemplar_digest(exemplars, tasks))
    if verify is not None:
        final = replace(final, verification=verify(PackageVersion(root, final)))
    crash_point("files-written")
    with catalog(root, readonly=False) as conn:
        add_version(conn, final, exemplars, tasks)
    crash_point("after-commit")
    return open_package(root)


def rollback(root: Path) -> int:
    """Make the current version's parent current again (under the writer lock); returns it."""
    with writer_lock(root, "rollback"):
        require_intact(root)
        current = _current(root, list_versions(root))  # the catalog's parent survives garbage collection
        if current.parent is None:
            raise PackageError(f"{root}: version {current.version} has no earlier version kept; nothing to roll back to",
                               code="conflict")
        target = open_package(root, version=current.parent)  # its files must still be there and intact ...
        target.exemplars()  # ... and its exemplars, which the next update learns from
        with catalog(root, readonly=False) as conn, transaction(conn):
            conn.execute("UPDATE head SET version = ? WHERE id = 0", (current.parent,))
    return current.parent


def collect_garbage(root: Path, *, keep: int = KEEP_VERSIONS) -> list[str]:
    """Drop versions beyond the newest ``keep`` (never the current one or its parent) and unused files."""
    versions = list_versions(root)
    current = _current(root, versions)
    keep_set = {v.version for v in versions[-keep:]} | {current.version}
    if current.parent is not None:
        keep_set.add(current.parent)
    drop = [v.version for v in versions if v.version not in keep_set]
    with catalog(root, readonly=False) as conn, transaction(conn):
        for version in drop:
            for table in ("exemplars", "exemplar_usage", "budgets"):
                conn.execute(f"DELETE FROM {table} WHERE version = ?", (version,))
            conn.execute("UPDATE versions SET parent = NULL WHERE parent = ?", (version,))
            conn.execute("DELETE FROM versions WHERE version = ?", (version,))
    removed = remove_orphans(root)
    if drop or removed:
        log.info("%s: dropped versions %s, removed %d unused files", root, drop, len(removed))
    return removed


def remove_orphans(root: Path) -> list[str]:
    """Remove files that no kept version references: what a failed or killed writer left behind.

    Only for the holder of the writer lock: another writer's new files are orphans until it commits.
    """
    versions = [v.version for v in list_versions(root)]
    entries = [f for v in versions for f in open_package(root, version=v, verify=False).manifest.files]
    used, used_sha = {f.name for f in entries}, {f.sha256 for f in entries}
    removed = []
    for path in root.iterdir():
        if path.is_file() and path.suffix in _PACKAGE_SUFFIXES and path.name not in used:
            path.unlink()
            removed.append(path.name)
    for meta in root.glob("engines/*/engine.json"):  # TensorRT engines of graphs no version uses
        if json.loads(meta.read_text()).get("parts", {}).get("onnx_sha256") not in used_sha:
            shutil.rmtree(meta.parent)
            removed.append(f"engines/{meta.parent.name}")
    for stale in root.glob(".*.tmp"):  # temp files of an interrupted write
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
    return removed
