"""The package: what a user copies to the device. Shared by export (writes) and runtime (reads).

Layout (a directory)::

    catalog.sqlite            versions: each version's manifest (JSON) and its exemplar rows
    <sha256>.onnx             graphs: trunk, branch-K, full, full-int8 (optional); named by content
    <sha256>.safetensors      head weights (classifier, read with numpy) and training weights
    engines/<key>/            TensorRT engine cache: always safe to delete, rebuilt from the ONNX

Reading verifies what it uses: the format version, the manifest's own sha256, and for every file
the name (plain, inside the package, no link), size and sha256. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import sqlite3
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from memo_edge.errors import InputError
from memo_edge.memory.exemplars import ExemplarSet
from memo_edge.utils.io import atomic_directory, atomic_write_bytes, sha256_file

__all__ = [
    "FORMAT_VERSION", "CATALOG", "INT8_ROLE", "PackageError", "FileEntry", "InputSpec", "Budget", "Manifest",
    "PackageVersion", "open_package", "write_package", "store_file", "check_name", "exemplar_digest",
]

FORMAT_VERSION = 1
INT8_ROLE = "full-int8"  # an int8 copy of the full graph for CPU inference (export --int8)
CATALOG = "catalog.sqlite"
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")

_SCHEMA = """
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


class PackageError(InputError):
    """A package that is damaged, from an unknown format, or unsafe to read."""


@dataclass(frozen=True)
class FileEntry:
    name: str  # <sha256><ext>, a plain name inside the package
    role: str  # trunk | branch | full | full-int8 | head | weights
    sha256: str
    size: int
    task: int | None = None  # the task of a branch graph


@dataclass(frozen=True)
class InputSpec:
    height: int
    width: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dtype: str = "uint8"
    layout: str = "NHWC"
    preprocessing: str = "in-graph"  # uint8 -> float, /255, (x - mean) / std, NHWC -> NCHW inside trunk/full

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


@dataclass(frozen=True)
class Budget:
    """Memory alignment on the device: model + exemplars never exceed ``total_bytes``."""

    total_bytes: int
    model_bytes: int
    exemplar_bytes: int  # bytes the stored exemplars take
    bytes_per_exemplar: int
    exemplars: int
    per_class: int


@dataclass(frozen=True)
class Manifest:
    version: int
    class_names: tuple[str, ...]  # in label order
    task_classes: tuple[tuple[int, int], ...]  # [first, end) labels of each task; task t uses branch t
    input: InputSpec
    model: dict[str, Any]  # backbone, split, feature_dim, task_sizes, trunk_frozen
    budget: Budget
    files: tuple[FileEntry, ...]
    opset: int
    verification: dict[str, Any] = field(default_factory=dict)
    producer: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    exemplars_sha256: str = ""  # exemplar_digest() of this version's exemplar rows
    parent: int | None = None  # the version this one was derived from
    created: str = ""
    format_version: int = FORMAT_VERSION

    def file(self, role: str, task: int | None = None) -> FileEntry | None:
        for entry in self.files:
            if entry.role == role and entry.task == task:
                return entry
        return None

    def branches(self) -> list[FileEntry]:
        return sorted((f for f in self.files if f.role == "branch"), key=lambda f: f.task or 0)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        inp = data["input"]
        return cls(
            version=int(data["version"]),
            class_names=tuple(data["class_names"]),
            task_classes=tuple((int(a), int(b)) for a, b in data["task_classes"]),
            input=InputSpec(**{**inp, "mean": tuple(inp["mean"]), "std": tuple(inp["std"])}),
            model=dict(data["model"]),
            budget=Budget(**data["budget"]),
            files=tuple(FileEntry(**f) for f in data["files"]),
            opset=int(data["opset"]),
            verification=dict(data.get("verification", {})),
            producer=dict(data.get("producer", {})),
            source=dict(data.get("source", {})),
            exemplars_sha256=str(data.get("exemplars_sha256", "")),
            parent=data.get("parent"),
            created=str(data.get("created", "")),
            format_version=int(data["format_version"]),
        )


def check_name(name: str) -> str:
    """A manifest may only name plain files inside the package: no paths, no ``..``, no hidden files."""
    if not isinstance(name, str) or not _PLAIN_NAME.match(name) or ".." in name:
        raise PackageError(f"unsafe file name in package manifest: {name!r} (only plain names inside the package)")
    return name


def store_file(root: Path, data: bytes, role: str, ext: str, task: int | None = None) -> FileEntry:
    """Write ``data`` content-addressed into ``root`` (atomically); an existing identical file is kept."""
    digest = hashlib.sha256(data).hexdigest()
    name = check_name(f"{digest}{ext}")
    if not ((root / name).is_file() and sha256_file(root / name) == digest):
        atomic_write_bytes(root / name, data)
    return FileEntry(name=name, role=role, sha256=digest, size=len(data), task=task)


def exemplar_digest(exemplars: ExemplarSet, tasks: np.ndarray) -> str:
    """sha256 over the exemplar rows in (label, rank) order, recorded in the manifest's budget check."""
    h = hashlib.sha256()
    order = np.lexsort((exemplars.ranks, exemplars.labels))
    for i in order:
        h.update(struct.pack("<qqq", int(exemplars.labels[i]), int(exemplars.ranks[i]), int(tasks[i])))
        h.update(exemplars.images[i].tobytes())
    return h.hexdigest()


# -- writing ----------------------------------------------------------------------------------------


def connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}?mode=rwc"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)  # explicit BEGIN/COMMIT below
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _manifest_text(manifest: Manifest) -> str:
    return json.dumps(manifest.to_json(), sort_keys=True, separators=(",", ":"))


def add_version(conn: sqlite3.Connection, manifest: Manifest, exemplars: ExemplarSet, tasks: np.ndarray) -> None:
    """Insert one version, its budget and its exemplar rows and make it current, in one transaction."""
    text = _manifest_text(manifest)
    rows = ((manifest.version, int(l), int(r), int(t), sqlite3.Binary(img.tobytes()))
            for l, r, t, img in zip(exemplars.labels, exemplars.ranks, tasks, exemplars.images))
    with transaction(conn):
        conn.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?)", (manifest.version, manifest.parent,
                     manifest.created, text, hashlib.sha256(text.encode()).hexdigest()))
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
            # WAL: readers keep reading their version while an update commits the next one.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(_SCHEMA)
            with transaction(conn):
                conn.execute("INSERT INTO meta VALUES ('format_version', ?)", (str(FORMAT_VERSION),))
            add_version(conn, final, exemplars, tasks)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
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
        conn = connect(self.root / CATALOG, readonly=True)
        try:
            rows = conn.execute("SELECT label, rank, task, image FROM exemplars WHERE version = ? ORDER BY label, rank",
                                (self.manifest.version,)).fetchall()
        finally:
            conn.close()
        shape = self.manifest.input.shape
        if not rows:
            exemplars, tasks = ExemplarSet.empty(shape), np.zeros(0, np.int64)
            if exemplar_digest(exemplars, tasks) != self.manifest.exemplars_sha256:
                raise PackageError(f"{self.root / CATALOG}: exemplars of version {self.manifest.version} are missing")
            return exemplars, tasks
        labels, ranks, tasks = (np.array([r[i] for r in rows], np.int64) for i in range(3))
        try:
            images = np.stack([np.frombuffer(r[3], np.uint8).reshape(shape) for r in rows])
        except ValueError:
            raise PackageError(f"{self.root / CATALOG}: an exemplar image does not have the input shape {shape}") from None
        exemplars = ExemplarSet(images, labels, ranks)
        digest = exemplar_digest(exemplars, tasks)
        if digest != self.manifest.exemplars_sha256:
            raise PackageError(f"{self.root / CATALOG}: exemplars of version {self.manifest.version} are damaged "
                               f"(sha256 {digest[:16]}..., expected {self.manifest.exemplars_sha256[:16]}...)")
        return exemplars, tasks


def open_package(root: Path, *, version: int | None = None, verify: bool = True) -> PackageVersion:
    """Open ``root`` at its current (or the given) version; verify every file the version lists."""
    root = Path(root)
    catalog = root / CATALOG
    if not catalog.is_file():
        raise PackageError(f"{root} is not a memo-edge package ({CATALOG} missing)")
    try:
        conn = connect(catalog, readonly=True)
        try:
            fmt = conn.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()
            if version is None:
                row = conn.execute("SELECT version FROM head WHERE id = 0").fetchone()
                version = None if row is None else row[0]
            found = conn.execute("SELECT manifest, manifest_sha256 FROM versions WHERE version = ?", (version,)).fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise PackageError(f"{catalog} is damaged: {exc}") from None
    if fmt is None or fmt[0] != str(FORMAT_VERSION):
        raise PackageError(f"{catalog}: package format {None if fmt is None else fmt[0]!r}, expected {FORMAT_VERSION}")
    if found is None:
        raise PackageError(f"{catalog}: no version {version}")
    text, expected = found
    actual = hashlib.sha256(text.encode()).hexdigest()
    if actual != expected:
        raise PackageError(f"{catalog}: manifest of version {version} is damaged (sha256 {actual[:16]}..., "
                           f"expected {expected[:16]}...)")
    manifest = Manifest.from_json(json.loads(text))
    if manifest.format_version != FORMAT_VERSION:
        raise PackageError(f"{catalog}: manifest format {manifest.format_version}, expected {FORMAT_VERSION}")
    for entry in manifest.files:
        check_name(entry.name)
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
