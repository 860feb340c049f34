"""A package version's manifest: typed records, parsing, and the consistency rules it must satisfy.

Torch-free; the catalog (``runtime/catalog.py``) stores manifests as JSON, ``runtime/formats.py``
migrates those of older formats, ``runtime/package.py`` reads whole versions and ``runtime/writer.py``
writes them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from memo_edge.errors import InputError
from memo_edge.memory.codec import parse_codec
from memo_edge.runtime.formats import FORMAT_VERSION, format_problem, migrate_manifest

__all__ = [
    "FORMAT_VERSION", "Role", "INT8_ROLE", "WEIGHTS_ROLE", "WEIGHTS_TRUNK", "WEIGHTS_BRANCH", "WEIGHTS_HEAD",
    "PackageError", "ReadOnlyPackageError", "FileEntry", "InputSpec", "Budget", "ModelRecord",
    "Manifest", "check_name", "manifest_problem", "manifest_text", "read_manifest",
]


class Role(str, Enum):
    """What a package file is; the value is what the manifest's JSON says (a StrEnum, kept 3.10-compatible)."""

    TRUNK = "trunk"  # ONNX: uint8 image -> the shared trunk's feature map
    BRANCH = "branch"  # ONNX: trunk features -> one task's features (``FileEntry.task``)
    FULL = "full"  # ONNX: uint8 image -> logits, one graph
    FULL_INT8 = "full-int8"  # an int8 copy of the full graph for CPU inference (export --int8)
    HEAD = "head"  # safetensors: the classifier, read with numpy
    # Training weights (safetensors, what `update` learns from), one file per component: the trunk's,
    # one per branch (task t) and the classifiers' (fc, aux_fc), so an unchanged component keeps its
    # content-addressed file across updates. Older packages hold one WEIGHTS file with every tensor.
    WEIGHTS_TRUNK = "weights-trunk"
    WEIGHTS_BRANCH = "weights-branch"
    WEIGHTS_HEAD = "weights-head"
    WEIGHTS = "weights"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def kept_by_update(self, *, train_base: bool) -> bool:
        """Whether an update carries this file over unchanged from the version it learns from.

        The old branch graphs always (old branches stay frozen), the trunk graph while the trunk
        does; every other file is written anew (weights by content address: an unchanged component's
        bytes land in the same file).
        """
        return self is Role.BRANCH or (self is Role.TRUNK and not train_base)


# The short names the rest of the code has used for these roles.
INT8_ROLE = Role.FULL_INT8
WEIGHTS_ROLE, WEIGHTS_TRUNK, WEIGHTS_BRANCH, WEIGHTS_HEAD = (
    Role.WEIGHTS, Role.WEIGHTS_TRUNK, Role.WEIGHTS_BRANCH, Role.WEIGHTS_HEAD)
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
    role: Role
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
    resize_to: int | None = None  # always set in a manifest (format 1 could leave it out)

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
    # How the exemplar rows are stored (memo_edge.memory.codec); exemplar_bytes counts them so.
    codec: str = "raw"
    codec_header: str = ""  # Codec.header_sha256 when written: this Pillow must rebuild the same tables


@dataclass(frozen=True)
class ModelRecord:
    """What ``update`` rebuilds the model from, and how its images are augmented and resized."""

    backbone: str  # a name of memo_edge.model.backbones
    split: int  # the stage where the trunk ends and the branches begin
    feature_dim: int  # features per branch
    task_sizes: tuple[int, ...]  # classes per task, as the manifest's task_classes
    trunk_frozen: bool
    augment: str  # "cifar" or "imagenet" (memo_edge.train.augment)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "task_sizes": list(self.task_sizes)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelRecord:
        return cls(backbone=str(data["backbone"]), split=int(data["split"]), feature_dim=int(data["feature_dim"]),
                   task_sizes=tuple(int(n) for n in data["task_sizes"]), trunk_frozen=bool(data["trunk_frozen"]),
                   augment=str(data["augment"]))


@dataclass(frozen=True)
class Manifest:
    version: int
    class_names: tuple[str, ...]  # in label order
    task_classes: tuple[tuple[int, int], ...]  # [first, end) labels of each task; task t uses branch t
    input: InputSpec
    model: ModelRecord
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

    def file(self, role: Role, task: int | None = None) -> FileEntry | None:
        for entry in self.files:
            if entry.role == role and entry.task == task:
                return entry
        return None

    def branches(self) -> list[FileEntry]:
        return sorted((f for f in self.files if f.role == Role.BRANCH), key=lambda f: f.task or 0)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "model": self.model.to_json()}  # a Role is written as its string

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """Parse a manifest of the current format; a field of the wrong shape raises ValueError naming it."""

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
            input=field_("input", lambda v: InputSpec(**{**v, "mean": tuple(v["mean"]), "std": tuple(v["std"])})),
            model=field_("model", ModelRecord.from_json),
            budget=field_("budget", lambda v: Budget(**v)),
            files=field_("files", lambda v: tuple(FileEntry(**{**f, "role": _role(f["role"])}) for f in v)),
            opset=field_("opset", int),
            verification=dict(data.get("verification", {})),
            producer=dict(data.get("producer", {})),
            source=dict(data.get("source", {})),
            exemplars_sha256=str(data.get("exemplars_sha256", "")),
            parent=data.get("parent"),
            created=str(data.get("created", "")),
            format_version=int(data["format_version"]),
        )


def _role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise ValueError(f"unknown role {value!r} (known: {', '.join(Role)})") from None


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
        unreadable = format_problem(data.get("format_version"))
        if unreadable is not None:
            raise PackageError(f"{where}: {unreadable}")
        manifest = Manifest.from_json(migrate_manifest(data))
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
    if list(m.model.task_sizes) != sizes:
        return f"model.task_sizes: {list(m.model.task_sizes)} does not match task_classes {sizes}"
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
    fixed = codec.fixed_size(b.bytes_per_exemplar)
    if fixed is not None and b.exemplar_bytes != b.exemplars * fixed:
        return f"budget.exemplar_bytes: {b.exemplar_bytes} for {b.exemplars} exemplars of {fixed} B"
    if b.model_bytes + b.exemplar_bytes > b.total_bytes:
        return f"budget: model {b.model_bytes} B + exemplars {b.exemplar_bytes} B exceed the total {b.total_bytes} B"
    for entry in m.files:
        check_name(entry.name)
    for role in (Role.TRUNK, Role.HEAD):
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
    split = [f for f in m.files if f.role in (Role.WEIGHTS_TRUNK, Role.WEIGHTS_BRANCH, Role.WEIGHTS_HEAD)]
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
