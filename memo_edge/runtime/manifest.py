"""A package version's manifest: typed records, parsing, and the consistency rules it must satisfy.

Torch-free; the catalog (``runtime/catalog.py``) stores manifests as JSON, ``runtime/package.py``
reads and writes whole versions.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from memo_edge.data.sources import eval_resize
from memo_edge.errors import InputError
from memo_edge.memory.codec import parse_codec

__all__ = [
    "FORMAT_VERSION", "INT8_ROLE", "WEIGHTS_ROLE", "WEIGHTS_TRUNK", "WEIGHTS_BRANCH", "WEIGHTS_HEAD",
    "PackageError", "ReadOnlyPackageError", "FileEntry", "InputSpec", "Budget",
    "Manifest", "check_name", "manifest_problem", "manifest_text", "read_manifest",
]

FORMAT_VERSION = 1
INT8_ROLE = "full-int8"  # an int8 copy of the full graph for CPU inference (export --int8)
# Training weights (safetensors, what `update` learns from). Per component since issue 13: the
# trunk's, one per branch (task t), and the classifiers' (fc, aux_fc); an unchanged component keeps
# its content-addressed file across updates. Packages written before hold one WEIGHTS_ROLE file.
WEIGHTS_ROLE = "weights"
WEIGHTS_TRUNK, WEIGHTS_BRANCH, WEIGHTS_HEAD = "weights-trunk", "weights-branch", "weights-head"
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


class PackageError(InputError):
    """A package that is damaged, from an unknown format, or unsafe to read."""

    code = "corrupt"


class ReadOnlyPackageError(PackageError):
    """A write (update, rollback) asked of a package on storage this process cannot write."""

    code = "read_only"


@dataclass(frozen=True)
class FileEntry:
    name: str  # <sha256><ext>, a plain name inside the package
    role: str  # trunk | branch | full | full-int8 | head | weights-trunk | weights-branch | weights-head | weights (old)
    sha256: str
    size: int
    task: int | None = None  # the task of a branch graph or of a branch's weights


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
    # Image files are read as the training data was: shorter side to this, then a centre crop of
    # height x width (data.sources.eval_resize); None: to the height (CIFAR-style packages).
    resize_to: int | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    @property
    def file_resize(self) -> int:
        """The shorter side an image file is resized to before its centre crop."""
        return self.resize_to or self.height


@dataclass(frozen=True)
class Budget:
    """Memory alignment on the device: model + exemplars never exceed ``total_bytes``."""

    total_bytes: int
    model_bytes: int
    exemplar_bytes: int  # bytes the stored exemplars take
    bytes_per_exemplar: int
    exemplars: int
    per_class: int
    # How the exemplar rows are stored (memo_edge.memory.codec); exemplar_bytes counts them so. Left
    # out of raw manifests, which stay as older memo-edge versions wrote and read them.
    codec: str = "raw"
    codec_header: str = ""  # Codec.header_sha256 when written: this Pillow must rebuild the same tables


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
        data = asdict(self)
        if self.budget.codec == "raw":
            for key in ("codec", "codec_header"):
                data["budget"].pop(key)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """Parse a manifest; a field of the wrong shape raises ValueError naming the field."""

        def field_(name: str, parse: Callable[[Any], Any]) -> Any:
            value = data[name]  # a KeyError names a missing field
            try:
                return parse(value)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a field of the wrong shape
                raise ValueError(f"{name}: {type(exc).__name__} {exc}") from None

        return cls(
            version=field_("version", int),
            class_names=field_("class_names", tuple),
            task_classes=field_("task_classes", lambda v: tuple((int(a), int(b)) for a, b in v)),
            input=field_("input", lambda v: _input_spec(v, data.get("model", {}))),
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


def _input_spec(data: dict[str, Any], model: dict[str, Any]) -> InputSpec:
    # Manifests written before resize_to existed: the rule their runtime applied, from the augmentation.
    resize_to = data.get("resize_to", eval_resize(data["height"], model.get("augment", "cifar")))
    return InputSpec(**{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"]), "resize_to": resize_to})


def check_name(name: str) -> str:
    """A manifest may only name plain files inside the package: no paths, no ``..``, no hidden files."""
    if not isinstance(name, str) or not _PLAIN_NAME.match(name) or ".." in name:
        raise PackageError(f"unsafe file name in package manifest: {name!r} (only plain names inside the package)")
    return name


def manifest_text(manifest: Manifest) -> str:
    return json.dumps(manifest.to_json(), sort_keys=True, separators=(",", ":"))


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


_ROLES = ("trunk", "branch", "full", INT8_ROLE, "head", WEIGHTS_ROLE, WEIGHTS_TRUNK, WEIGHTS_BRANCH, WEIGHTS_HEAD)


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
    if inp.file_resize < min(inp.height, inp.width):
        return f"input.resize_to: {inp.resize_to} is below the {inp.height}x{inp.width} crop"
    if not all(s > 0 for s in inp.std):
        return f"input.std: {list(inp.std)} must be positive"
    counts = {k: v for k, v in asdict(b).items() if k not in ("codec", "codec_header")}
    if any(not isinstance(v, int) or v < 0 for v in counts.values()):
        return f"budget: {counts} must be non-negative integers"
    if b.bytes_per_exemplar != inp.height * inp.width * inp.channels:
        return f"budget.bytes_per_exemplar: {b.bytes_per_exemplar}, but the input is {inp.height}x{inp.width}x{inp.channels}"
    try:
        codec = parse_codec(b.codec)
    except ValueError as exc:
        return f"budget.codec: {exc}"
    if codec.spec != b.codec:
        return f"budget.codec: {b.codec!r} is not written as {codec.spec!r}"
    if b.codec_header != codec.header_sha256(inp.channels):
        return (f"budget.codec_header: this Pillow builds other {codec} tables than those the exemplars were "
                f"written with ({b.codec_header[:16]!r})")
    if codec.is_raw and b.exemplar_bytes != b.exemplars * b.bytes_per_exemplar:
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
    return _weights_problem(m, branches)


def _weights_problem(m: Manifest, branches: list[int | None]) -> str | None:
    """Training weights are optional, but whole: one old-style file, or every component's."""
    roles = [f.role for f in m.files]
    split = [f for f in m.files if f.role in (WEIGHTS_TRUNK, WEIGHTS_BRANCH, WEIGHTS_HEAD)]
    if roles.count(WEIGHTS_ROLE) > 1:
        return f"files: {roles.count(WEIGHTS_ROLE)} {WEIGHTS_ROLE} files, expected at most one"
    if not split:
        return None
    if WEIGHTS_ROLE in roles:
        return f"files: both a whole {WEIGHTS_ROLE} file and per-component weights"
    for role in (WEIGHTS_TRUNK, WEIGHTS_HEAD):
        if roles.count(role) != 1 or m.file(role) is None:
            return f"files: {roles.count(role)} {role} files without a task, expected one"
    tasks = sorted((f.task for f in split if f.role == WEIGHTS_BRANCH), key=lambda t: -1 if t is None else t)
    if tasks != branches:
        return f"files: {WEIGHTS_BRANCH} for tasks {tasks}, expected one per branch graph {branches}"
    return None
