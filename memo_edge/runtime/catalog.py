"""The package catalog: one SQLite file of versions, manifests, budgets and exemplar rows.

Rollback-journal mode, not WAL: after every write the catalog is one self-contained file, so a
package copied to read-only media (a read-only root filesystem, a mounted image) opens with no
-wal/-shm files beside it, and readers never create any. The budget rule lives in the schema
(triggers), so no code path can store more exemplar bytes than a version's budget allows. Torch-free.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from memo_edge.memory.exemplars import ExemplarSet
from memo_edge.runtime.manifest import Manifest, PackageError, ReadOnlyPackageError, manifest_text

__all__ = [
    "CATALOG", "SCHEMA", "JOURNAL_MODE", "BUSY_TIMEOUT_S", "writable", "connect", "catalog", "catalog_error", "transaction",
    "current_version", "next_version", "add_version", "crash_point",
]

CATALOG = "catalog.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY,
    parent INTEGER REFERENCES versions(version),
    created TEXT NOT NULL,
    manifest TEXT NOT NULL,
    manifest_sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS head (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    version INTEGER NOT NULL REFERENCES versions(version)
);
-- The budget of each version, fixed when the version is written.
CREATE TABLE IF NOT EXISTS budgets (
    version INTEGER PRIMARY KEY REFERENCES versions(version),
    total_bytes INTEGER NOT NULL,
    model_bytes INTEGER NOT NULL CHECK (model_bytes <= total_bytes)
);
CREATE TABLE IF NOT EXISTS exemplars (
    version INTEGER NOT NULL REFERENCES versions(version),
    label INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    task INTEGER NOT NULL,
    image BLOB NOT NULL,
    PRIMARY KEY (version, label, rank)
);
CREATE TABLE IF NOT EXISTS exemplar_usage (version INTEGER PRIMARY KEY, bytes INTEGER NOT NULL);
-- The budget rule lives in the database, so no code path can store more exemplar bytes than
-- total - model bytes of their version: every insert is checked, rows and budgets never change.
CREATE TRIGGER IF NOT EXISTS exemplar_budget BEFORE INSERT ON exemplars BEGIN
    SELECT RAISE(ABORT, 'exemplar budget exceeded')
    WHERE COALESCE((SELECT bytes FROM exemplar_usage WHERE version = NEW.version), 0) + length(NEW.image)
          > COALESCE((SELECT total_bytes - model_bytes FROM budgets WHERE version = NEW.version), -1);
END;
CREATE TRIGGER IF NOT EXISTS exemplar_usage_insert AFTER INSERT ON exemplars BEGIN
    INSERT INTO exemplar_usage (version, bytes) VALUES (NEW.version, length(NEW.image))
    ON CONFLICT (version) DO UPDATE SET bytes = bytes + length(NEW.image);
END;
CREATE TRIGGER IF NOT EXISTS exemplar_usage_delete AFTER DELETE ON exemplars BEGIN
    UPDATE exemplar_usage SET bytes = bytes - length(OLD.image) WHERE version = OLD.version;
END;
CREATE TRIGGER IF NOT EXISTS exemplars_immutable BEFORE UPDATE ON exemplars BEGIN
    SELECT RAISE(ABORT, 'exemplar rows are immutable');
END;
CREATE TRIGGER IF NOT EXISTS budgets_immutable BEFORE UPDATE ON budgets BEGIN
    SELECT RAISE(ABORT, 'budgets are immutable');
END;
"""


JOURNAL_MODE = "DELETE"
BUSY_TIMEOUT_S = 30.0  # a reader waits this long for a committing writer, and vice versa


def writable(root: Path) -> bool:
    """Can this process write the package directory and its catalog (False on read-only media)?"""
    catalog = root / CATALOG
    return os.access(root, os.W_OK) and (not catalog.exists() or os.access(catalog, os.W_OK))


def connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """A connection to the catalog at ``path``; use :func:`catalog` unless you manage errors yourself.

    A reader on writable storage opens read-write but query-only, so that SQLite can roll back the
    journal of a writer that was killed mid-transaction; on read-only storage it opens read-only, and
    immutable for a catalog left in WAL mode by an older memo-edge (it cannot be opened otherwise).
    """
    if readonly and not writable(path.parent):
        legacy_wal = _header_says_wal(path) and not path.with_name(path.name + "-wal").exists()
        uri = f"file:{path}?mode=ro" + ("&immutable=1" if legacy_wal else "")
    else:
        uri = f"file:{path}?mode={'rw' if readonly else 'rwc'}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S)  # explicit BEGIN/COMMIT
    conn.execute("PRAGMA foreign_keys = ON")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
    return conn


def _header_says_wal(path: Path) -> bool:
    """SQLite's file header: bytes 18-19 are 2 for a database in WAL mode."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return len(header) == 20 and header[18:20] == b"\x02\x02"


@contextlib.contextmanager
def catalog(root: Path, *, readonly: bool = True) -> Iterator[sqlite3.Connection]:
    """A connection to ``root``'s catalog, closed afterwards; SQLite errors become one-line PackageErrors."""
    path = root / CATALOG
    if not path.is_file():
        raise PackageError(f"{root} is not a memo-edge package ({CATALOG} missing)")
    try:
        conn = connect(path, readonly=readonly)
        try:
            if not readonly:
                conn.execute(f"PRAGMA journal_mode = {JOURNAL_MODE}")  # converts a WAL catalog of older packages
            yield conn
        finally:
            conn.close()
    except sqlite3.IntegrityError:
        raise  # a refused insert: the caller says what it means
    except sqlite3.DatabaseError as exc:
        raise catalog_error(root, exc) from None


def catalog_error(root: Path, exc: sqlite3.DatabaseError) -> PackageError:
    """What a SQLite error on the catalog means for the user, as one line."""
    text = str(exc)
    if "readonly" in text or "read-only" in text:
        if not writable(root):
            return ReadOnlyPackageError(f"{root} is read-only ({text}); copy the package to writable storage to change it")
        return PackageError(f"{root / CATALOG}: {text}; a killed writer left a journal that only a writable open "
                            "can roll back (run memo-edge info on writable storage)")
    if "locked" in text or "busy" in text:
        return PackageError(f"{root / CATALOG} is busy: another process kept it locked for {BUSY_TIMEOUT_S:.0f} s; try again")
    return PackageError(f"{root / CATALOG} is damaged: {text} (memo-edge info {root} runs a full check)")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def current_version(conn: sqlite3.Connection) -> int | None:
    row = conn.execute("SELECT version FROM head WHERE id = 0").fetchone()
    return None if row is None else int(row[0])


def next_version(root: Path) -> int:
    """The number of the next version: above every version ever kept, so one after a rollback is new too."""
    with catalog(root) as conn:
        row = conn.execute("SELECT MAX(version) FROM versions").fetchone()
        mark = conn.execute("SELECT value FROM meta WHERE key = 'last_version'").fetchone()
    return max(int(row[0] or 0), int(mark[0]) if mark else 0) + 1


def add_version(conn: sqlite3.Connection, manifest: Manifest, exemplars: ExemplarSet, tasks: np.ndarray) -> None:
    """Insert one version, its budget and its exemplar rows and make it current, in one transaction.

    The version must be derived from the current one (``manifest.parent``; None for a new package):
    a commit that finds the current version changed under it, or its number taken, is refused. The
    catalog's format becomes the manifest's (an older package that gets a version is of the new format).
    """
    text = manifest_text(manifest)
    rows = ((manifest.version, int(l), int(r), int(t), sqlite3.Binary(blob))  # as stored: encoded under a codec
            for l, r, t, blob in zip(exemplars.labels, exemplars.ranks, tasks, exemplars.stored()))
    with transaction(conn):
        head = current_version(conn)
        if head != manifest.parent:
            raise PackageError(f"version {manifest.version} was derived from version {manifest.parent}, but version "
                               f"{head} became current meanwhile; not applied")
        if conn.execute("SELECT 1 FROM versions WHERE version = ?", (manifest.version,)).fetchone():
            raise PackageError(f"version {manifest.version} exists already; not applied")
        conn.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?)", (manifest.version, manifest.parent,
                     manifest.created, text, hashlib.sha256(text.encode()).hexdigest()))
        for key, value in (("last_version", manifest.version), ("format_version", manifest.format_version)):
            conn.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                         (key, str(value)))
        conn.execute("INSERT INTO budgets VALUES (?, ?, ?)",
                     (manifest.version, manifest.budget.total_bytes, manifest.budget.model_bytes))
        try:
            conn.executemany("INSERT INTO exemplars VALUES (?, ?, ?, ?, ?)", rows)
        except sqlite3.IntegrityError as exc:
            raise PackageError(f"version {manifest.version}: {exc} (exemplars {exemplars.nbytes:,} B, budget "
                               f"{manifest.budget.total_bytes - manifest.budget.model_bytes:,} B)") from None
        conn.execute("INSERT INTO head VALUES (0, ?) ON CONFLICT(id) DO UPDATE SET version = excluded.version",
                     (manifest.version,))
        crash_point("before-commit")


def crash_point(name: str) -> None:
    """Fault injection for the crash tests: SIGKILL this process at ``name`` when asked to.

    Set ``MEMO_EDGE_CRASH_AT=<name>``; the points are files-written, before-commit and after-commit.
    """
    if os.environ.get("MEMO_EDGE_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
