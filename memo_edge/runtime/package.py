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
    "PackageVersion", "ReadOnlyPackageError", "open_package", "write_package", "store_file", "check_name",
    "exemplar_digest", "catalog", "catalog_error", "current_version", "next_version", "read_manifest",
    "manifest_problem", "writable",
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


class ReadOnlyPackageError(PackageError):
    """A write (update, rollback) asked of a package on storage this process cannot write."""


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
        """Parse a manifest; a field of the wrong shape raises ValueError naming the field."""

        def field_(name: str, parse: Callable[[Any], Any]) -> Any:
            try:
                return parse(data[name])
            except KeyError:
                raise
            except (TypeError, ValueError, AttributeError) as exc:
                raise ValueError(f"{name}: {exc}") from None

        return cls(
            version=field_("version", int),
            class_names=field_("class_names", tuple),
            task_classes=field_("task_classes", lambda v: tuple((int(a), int(b)) for a, b in v)),
            input=field_("input", lambda v: InputSpec(**{**v, "mean": tuple(v["mean"]), "std": tuple(v["std"])})),
            model=field_("model", dict),
            budget=field_("budget", lambda v: Budget(**v)),
            files=field_("files", lambda v: tuple(FileEntry(**f) for f in v)),
            opset=field_("opset", int),
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


# -- the catalog ----------------------------------------------------------------------------------

# Rollback-journal mode, not WAL: after every write the catalog is one self-contained file, so a
# package copied to read-only media (a read-only root filesystem, a mounted image) opens with no
# -wal/-shm files beside it, and readers never create any. Writes are rare (update, rollback) and short.
_JOURNAL_MODE = "DELETE"
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
                conn.execute(f"PRAGMA journal_mode = {_JOURNAL_MODE}")  # converts a WAL catalog of older packages
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


# -- writing ----------------------------------------------------------------------------------------


def _manifest_text(manifest: Manifest) -> str:
    return json.dumps(manifest.to_json(), sort_keys=True, separators=(",", ":"))


def add_version(conn: sqlite3.Connection, manifest: Manifest, exemplars: ExemplarSet, tasks: np.ndarray) -> None:
    """Insert one version, its budget and its exemplar rows and make it current, in one transaction.

    The version must be derived from the current one (``manifest.parent``; None for a new package):
    a commit that finds the current version changed under it, or its number taken, is refused.
    """
    text = _manifest_text(manifest)
    rows = ((manifest.version, int(l), int(r), int(t), sqlite3.Binary(img.tobytes()))
            for l, r, t, img in zip(exemplars.labels, exemplars.ranks, tasks, exemplars.images))
    with transaction(conn):
        head = current_version(conn)
        if head != manifest.parent:
            raise PackageError(f"version {manifest.version} was derived from version {manifest.parent}, but version "
                               f"{head} became current meanwhile; not applied")
        if conn.execute("SELECT 1 FROM versions WHERE version = ?", (manifest.version,)).fetchone():
            raise PackageError(f"version {manifest.version} exists already; not applied")
        conn.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?)", (manifest.version, manifest.parent,
                     manifest.created, text, hashlib.sha256(text.encode()).hexdigest()))
        conn.execute("INSERT INTO meta VALUES ('last_version', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                     (str(manifest.version),))
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
            conn.execute(f"PRAGMA journal_mode = {_JOURNAL_MODE}")
            conn.executescript(_SCHEMA)
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


def read_manifest(where: Path, version: int, text: str, expected_sha256: str) -> Manifest:
    """A version's manifest from its catalog row: its sha256 checked, parsed, and consistent."""
    actual = hashlib.sha256(text.encode()).hexdigest()
    if actual != expected_sha256:
        raise PackageError(f"{where}: manifest of version {version} is damaged (sha256 {actual[:16]}..., "
                           f"expected {expected_sha256[:16]}...)")
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        if data.get("format_version") != FORMAT_VERSION:
            raise PackageError(f"{where}: manifest format {data.get('format_version')!r}, expected {FORMAT_VERSION}")
        manifest = Manifest.from_json(data)
    except KeyError as exc:
        raise PackageError(f"{where}: manifest of version {version} lacks the field {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise PackageError(f"{where}: manifest of version {version} is malformed: {exc}") from None
    problem = manifest_problem(manifest)
    if problem is None and manifest.version != version:
        problem = f"version: says {manifest.version}, stored as version {version}"
    if problem is not None:
        raise PackageError(f"{where}: manifest of version {version} is inconsistent: {problem}")
    return manifest


_ROLES = ("trunk", "branch", "full", INT8_ROLE, "head", "weights")


def manifest_problem(m: Manifest) -> str | None:
    """The first internal inconsistency of a manifest, naming its field; None if it holds together."""
    inp, b = m.input, m.budget
    names = m.class_names
    if not names or not all(isinstance(n, str) and n for n in names):
        return "class_names: must be a non-empty list of non-empty strings"
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        return f"class_names: repeated {', '.join(map(repr, dupes[:5]))}"
    ends = [0] + [end for _, end in m.task_classes]
    if not m.task_classes or any(a != e or a >= end for (a, end), e in zip(m.task_classes, ends)):
        return f"task_classes: {list(m.task_classes)} must be consecutive, non-empty label ranges from 0"
    if ends[-1] != len(names):
        return f"task_classes: end at {ends[-1]} classes, but class_names lists {len(names)}"
    sizes = [end - a for a, end in m.task_classes]
    if list(m.model.get("task_sizes", sizes)) != sizes:
        return f"model.task_sizes: {m.model.get('task_sizes')} does not match task_classes {sizes}"
    if min(inp.height, inp.width, inp.channels) < 1 or len(inp.mean) != inp.channels or len(inp.std) != inp.channels:
        return f"input: {inp.height}x{inp.width}x{inp.channels} with {len(inp.mean)} means and {len(inp.std)} stds"
    if not all(s > 0 for s in inp.std):
        return f"input.std: {list(inp.std)} must be positive"
    if any(not isinstance(v, int) or v < 0 for v in asdict(b).values()):
        return f"budget: {asdict(b)} must be non-negative integers"
    if b.bytes_per_exemplar != inp.height * inp.width * inp.channels:
        return f"budget.bytes_per_exemplar: {b.bytes_per_exemplar}, but the input is {inp.height}x{inp.width}x{inp.channels}"
    if b.exemplar_bytes != b.exemplars * b.bytes_per_exemplar:
        return f"budget.exemplar_bytes: {b.exemplar_bytes} for {b.exemplars} exemplars of {b.bytes_per_exemplar} B"
    if b.model_bytes + b.exemplar_bytes > b.total_bytes:
        return f"budget: model {b.model_bytes} B + exemplars {b.exemplar_bytes} B exceed the total {b.total_bytes} B"
    for entry in m.files:
        check_name(entry.name)
        if entry.role not in _ROLES:
            return f"files: unknown role {entry.role!r} ({entry.name})"
    for role in ("trunk", "head"):
        if m.file(role) is None:
            return f"files: no {role}"
    # One branch per task (MEMO, DER) or fewer (a single-backbone replay package has one).
    branches = [f.task for f in m.branches()]
    if not 1 <= len(branches) <= len(m.task_classes) or branches != list(range(len(branches))):
        return f"files: branch graphs for tasks {branches}, expected tasks 0, 1, ... (at most {len(m.task_classes)})"
    return None


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
