"""``memo-edge doctor``: what this machine can run, and why not, one line per check (like ``yolo checks``).

Python, numpy, ONNX Runtime and its providers (and the two-wheel conflict), onnx, cuda-python and the
driver, the GPUs, TensorRT, torch, the [serve] extra, the Jetson's L4T/JetPack, then each backend. Each
:class:`Check` names what it enables, so the report says what runs here and which checks block the rest.
The probes call the runtime's own loaders and each backend's ``missing()``, not copies of them: the
doctor fails where the commands would, with their messages and install hints.

torch is probed in a child process, never imported here: the runtime never imports torch
(docs/architecture.md), and a torch whose import crashes or hangs (a missing libcudnn, a wheel for
another JetPack) becomes a line of the report. No check raises: a probe that fails unexpectedly becomes
an ``error`` line naming the exception.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from memo_edge import __version__
from memo_edge.errors import MemoEdgeError
from memo_edge.runtime.backends import AUTO_ORDER, BACKENDS, NO_GPU, load_onnxruntime
from memo_edge.runtime.cuda import CUDA_MISSING, check, load_cudart
from memo_edge.runtime.engine_cache import TRT_MISSING, load_tensorrt
from memo_edge.runtime.jetpack import JETPACK_LINES, release_for_l4t

__all__ = ["OK", "WARN", "MISSING", "ERROR", "CAPABILITIES", "NV_TEGRA_RELEASE", "Finding", "Check", "Report",
           "L4tRelease", "JetPack", "parse_nv_tegra_release", "jetpack_for", "probe_jetson", "probe_torch", "run_checks",
           "format_report"]

OK, WARN, MISSING, ERROR = "ok", "warn", "missing", "error"
USABLE = (OK, WARN)  # a warning does not stop what the check enables
# What checks enable: the backends of predict, bench and serve, and the commands that need more than
# the base install (info and rollback need nothing else).
CAPABILITIES = ("ort-cpu", "ort-cuda", "ort-trt", "tensorrt", "serve", "train", "export", "export --trt", "update")
NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
REQUIRES_PYTHON = ">=3.10"  # pyproject.toml's requires-python, for a source checkout that is not installed
SERVE_EXTRA = ("starlette", "uvicorn", "python-multipart", "prometheus-client")  # pyproject.toml's [serve]
TORCH_TIMEOUT_S = 180.0  # a first torch import on a Jetson's SD card takes tens of seconds
TORCH_HINT = "pip install 'memo-edge[train]' (on a Jetson: NVIDIA's PyTorch wheel for its JetPack)"
_SCHEMA = 1  # of --json; bumped when a key changes meaning


@dataclass(frozen=True)
class Finding:
    """What one probe found: a status, one line saying why, and facts for ``--json``."""

    status: str
    detail: str
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """One line of the report: a named finding and the capabilities it enables."""

    name: str
    status: str  # ok | warn | missing | error
    detail: str
    enables: tuple[str, ...] = ()
    facts: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "enables": list(self.enables)}


@dataclass(frozen=True)
class Report:
    """The checks in the order printed; what runs here follows from their statuses (:meth:`blockers`)."""

    checks: tuple[Check, ...]

    def blockers(self) -> dict[str, list[str]]:
        """Each capability and the checks that stop it here (an empty list: it runs here); serve also
        needs a backend, so without any its list says "a backend"."""
        found = {cap: [c.name for c in self.checks if cap in c.enables and c.status not in USABLE]
                 for cap in CAPABILITIES}
        if all(found[backend] for backend in BACKENDS):
            found["serve"].append("a backend")
        return found

    def to_json(self) -> dict[str, Any]:
        return {"schema": _SCHEMA, "memo_edge": __version__, "checks": [c.to_json() for c in self.checks],
                "capabilities": {cap: {"available": not names, "blocked_by": names}
                                 for cap, names in self.blockers().items()}}


@dataclass(frozen=True)
class L4tRelease:
    """Jetson Linux (L4T) release from the first line of /etc/nv_tegra_release, e.g. R36.4.3."""

    major: int
    minor: int
    patch: int
    board: str | None = None

    def __str__(self) -> str:
        return f"R{self.major}.{self.minor}.{self.patch}"


@dataclass(frozen=True)
class JetPack:
    """A JetPack release and the TensorRT it ships (the native tensorrt backend needs TensorRT 10)."""

    version: str  # "6.2"; "6.x" when only the L4T major release is known
    tensorrt: str | None  # the TensorRT this JetPack ships, where a source says so
    exact: bool = True


_L4T_LINE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?")
_BOARD = re.compile(r"BOARD:\s*([^,\s]+)")


def parse_nv_tegra_release(text: str) -> L4tRelease | None:
    """The release named by the first line ("# R35 (release), REVISION: 3.1, GCID: ..., BOARD: ..."), or None."""
    lines = text.strip().splitlines()
    match = _L4T_LINE.match(lines[0]) if lines else None
    if match is None:
        return None
    board = _BOARD.search(lines[0])
    return L4tRelease(int(match[1]), int(match[2]), int(match[3] or 0), board[1] if board else None)


def jetpack_for(release: L4tRelease) -> JetPack | None:
    """The JetPack of an L4T release: exact from the table, else its JetPack line, else None."""
    exact = release_for_l4t((release.major, release.minor, release.patch))
    if exact is not None:
        return JetPack(exact.jetpack, exact.tensorrt)
    line = JETPACK_LINES.get(release.major)
    return None if line is None else JetPack(line, None, exact=False)


def probe_jetson(path: Path = NV_TEGRA_RELEASE) -> Finding:
    """The Jetson line: not a Jetson, or its L4T release and JetPack (and the TensorRT that JetPack ships)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return Finding(OK, f"not a Jetson (no {path})")
    except OSError as exc:
        return Finding(WARN, f"cannot read {path}: {exc.strerror or exc}")
    release = parse_nv_tegra_release(text)
    if release is None:
        first = text.strip().splitlines()[0][:80] if text.strip() else "(empty)"
        return Finding(WARN, f"{path} names no L4T release ('# R<major> (release), REVISION: <x.y>, ...'): {first!r}")
    facts: dict[str, Any] = {"l4t": str(release)[1:], "board": release.board}
    jetpack = jetpack_for(release)
    if jetpack is None:
        return Finding(WARN, f"Jetson, L4T {release}: a release memo-edge does not know", facts)
    facts |= {"jetpack": jetpack.version, "jetpack_tensorrt": jetpack.tensorrt}
    detail = f"Jetson, L4T {release}: JetPack {jetpack.version}"
    if not jetpack.exact:
        detail += " (this revision is not in memo-edge's table)"
    if jetpack.tensorrt is None:
        return Finding(OK, detail, facts)
    detail += f", which ships TensorRT {jetpack.tensorrt}"
    if (_major(jetpack.tensorrt) or 0) < 10:
        return Finding(WARN, f"{detail}; the tensorrt backend needs TensorRT 10 (JetPack 6.1 or later): "
                             "use ort-cuda or ort-trt here", facts)
    return Finding(OK, detail, facts)


def _version(dist: str) -> str | None:
    """An installed distribution's version, without importing it."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _importable(module: str) -> bool:
    """Whether ``module`` can be found, without importing it (one already imported counts)."""
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: in sys.modules without a __spec__ (a stand-in)
        return sys.modules.get(module) is not None


def _major(version: str) -> int | None:
    match = re.match(r"\d+", version)
    return int(match[0]) if match else None


def _python() -> Finding:
    try:
        spec = importlib.metadata.metadata("memo-edge")["Requires-Python"] or REQUIRES_PYTHON
    except importlib.metadata.PackageNotFoundError:
        spec = REQUIRES_PYTHON
    version = platform.python_version()
    facts = {"version": version, "requires": spec, "machine": platform.machine()}
    floor = re.fullmatch(r">=\s*(\d+)\.(\d+)", spec.strip())
    if floor and sys.version_info[:2] < (int(floor[1]), int(floor[2])):
        return Finding(ERROR, f"Python {version} is older than memo-edge's requires-python {spec}", facts)
    return Finding(OK, f"{version} ({platform.python_implementation()}, {platform.system()} {platform.machine()}); "
                       f"memo-edge {__version__} needs {spec}", facts)


def _onnxruntime() -> Finding:
    try:
        ort = load_onnxruntime()  # refuses both wheels installed together, with the fix
    except MemoEdgeError as exc:
        return Finding(MISSING if not _importable("onnxruntime") else ERROR, str(exc))
    wheels = [d for d in ("onnxruntime", "onnxruntime-gpu") if _version(d)]
    providers = list(ort.get_available_providers())
    return Finding(OK, f"{ort.__version__} (wheel {' and '.join(wheels) or 'unknown'}): {', '.join(providers)}",
                   {"version": ort.__version__, "wheels": wheels, "providers": providers})


def _onnx() -> Finding:
    if not _importable("onnx"):  # found, not imported: importing onnx costs more than the rest together
        return Finding(MISSING, "onnx is not installed: export, update and TensorRT engines read graphs with it: "
                                "pip install 'memo-edge[onnx]'")
    version = _version("onnx")
    return Finding(OK, version or "installed", {"version": version})


def _cuda_version(value: int) -> str | None:
    """12060 as "12.6"; None for 0, which cudaDriverGetVersion reports without a driver."""
    return f"{value // 1000}.{value % 1000 // 10}" if value else None


def _cuda() -> Finding:
    wheels = [f"{d} {v}" for d in ("cuda-python", "cuda-bindings") if (v := _version(d))]
    try:
        rt = load_cudart()
    except MemoEdgeError as exc:
        return Finding(ERROR, str(exc)) if wheels else Finding(MISSING, CUDA_MISSING)
    name = wheels[0] if wheels else rt.__name__
    runtime = _cuda_version(check(rt, rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion"))
    driver = _cuda_version(check(rt, rt.cudaDriverGetVersion(), "cudaDriverGetVersion"))
    facts = {"bindings": rt.__name__, "runtime": runtime, "driver": driver}
    if driver is None:
        return Finding(MISSING, f"{name} (CUDA runtime {runtime}), but no NVIDIA driver answers: install the driver "
                                "(on a Jetson it comes with JetPack)", facts)
    if runtime is not None and (_major(driver) or 0) < (_major(runtime) or 0):
        return Finding(WARN, f"{name} is built for CUDA {runtime}, the NVIDIA driver supports CUDA {driver}: update "
                             f"the driver or install cuda-python {_major(driver)}.x", facts)
    return Finding(OK, f"{name}: CUDA runtime {runtime}, the driver supports CUDA {driver}", facts)


def _gpus() -> Finding:
    try:
        rt = load_cudart()
    except MemoEdgeError:
        return Finding(WARN, "cannot list the GPUs without cuda-python (see the cuda line); ort-cuda and ort-trt "
                             "do not need it")
    success = rt.cudaError_t.cudaSuccess
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = "" if visible is None else f" (CUDA_VISIBLE_DEVICES={visible!r})"
    err, count = rt.cudaGetDeviceCount()
    if err != success or not count:
        reason = "" if err == success else f" [{getattr(err, 'name', err)}]"
        return Finding(MISSING, f"{NO_GPU}{reason}{where}", {"count": 0})
    gpus: list[dict[str, Any]] = []
    for index in range(count):
        prop = check(rt, rt.cudaGetDeviceProperties(index), f"cudaGetDeviceProperties({index})")
        name = prop.name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        gpus.append({"index": index, "name": name, "compute_capability": f"{prop.major}.{prop.minor}",
                     "memory_gib": round(getattr(prop, "totalGlobalMem", 0) / 2**30, 1)})
    listed = "; ".join(f"{g['index']}: {g['name']} (sm {g['compute_capability']}, {g['memory_gib']} GiB)" for g in gpus)
    return Finding(OK, f"{count} GPU{'s' if count > 1 else ''}{where}: {listed}", {"count": count, "gpus": gpus})


def _tensorrt() -> Finding:
    if not _importable("tensorrt"):
        return Finding(MISSING, TRT_MISSING)
    try:
        trt = load_tensorrt()
    except MemoEdgeError as exc:  # the wheel without its libnvinfer, and the like
        return Finding(ERROR, str(exc))
    version = str(getattr(trt, "__version__", "unknown"))
    if (_major(version) or 10) < 10:
        return Finding(WARN, f"TensorRT {version}: the tensorrt backend and export --trt need TensorRT 10 or later",
                       {"version": version})
    return Finding(OK, f"TensorRT {version}", {"version": version})


_TORCH_CODE = """\
import json, torch
ok = torch.cuda.is_available()
print(json.dumps({"version": torch.__version__, "cuda": torch.version.cuda, "available": ok,
                  "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if ok else []}))
"""


def probe_torch(timeout_s: float = TORCH_TIMEOUT_S) -> Finding:
    """torch for update, train and export, as a child process sees it (this process never imports it)."""
    if not _importable("torch"):
        return Finding(MISSING, f"torch is not installed, so update, train and export are unavailable: {TORCH_HINT}")
    try:
        done = subprocess.run([sys.executable, "-c", _TORCH_CODE], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return Finding(ERROR, f"importing torch did not finish in {timeout_s:.0f} s")
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.strip()]
        why = f"killed by signal {-done.returncode}" if done.returncode < 0 else (errors or ["no message"])[-1]
        return Finding(ERROR, f"torch is installed but does not import: {why.strip()}")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    head = f"{info['version']} ({'CUDA ' + info['cuda'] + ' build' if info['cuda'] else 'CPU-only build'})"
    if info["available"]:
        return Finding(OK, f"{head}, CUDA available: {', '.join(info['devices'])}", info)
    why = "CUDA is not available to it" if info["cuda"] else "no CUDA in this build"
    return Finding(WARN, f"{head}, {why}: update and train run on the CPU only", info)


def _serve() -> Finding:
    versions = {dist: _version(dist) for dist in SERVE_EXTRA}
    absent = [dist for dist, version in versions.items() if version is None]
    if absent:
        return Finding(MISSING, f"{', '.join(absent)} not installed: pip install 'memo-edge[serve]'", versions)
    return Finding(OK, ", ".join(f"{dist} {version}" for dist, version in versions.items()), versions)


def _backend(name: str) -> Finding:
    problem = BACKENDS[name].missing()
    return Finding(OK, "available") if problem is None else Finding(MISSING, problem)


def _guarded(name: str, enables: tuple[str, ...], probe: Callable[[], Finding]) -> Check:
    """Run one probe; an unexpected exception is a finding too (a broken install gives a line, not a traceback)."""
    try:
        found = probe()
    except Exception as exc:  # noqa: BLE001 - reported, not swallowed: it becomes this check's error line
        found = Finding(ERROR, f"the check failed: {type(exc).__name__}: {exc}")
    detail = re.sub(r"\s*\n\s*", " ", found.detail).strip()  # one line, whatever a library put in its message
    return Check(name, found.status, detail, enables, found.facts)


def run_checks(*, nv_tegra_release: Path = NV_TEGRA_RELEASE,
               torch_probe: Callable[[], Finding] | None = None) -> Report:
    """Every check, in the order printed; ``nv_tegra_release`` and ``torch_probe`` are for tests."""
    probes: list[tuple[str, tuple[str, ...], Callable[[], Finding]]] = [
        ("python", CAPABILITIES, _python),
        ("numpy", CAPABILITIES, lambda: Finding(OK, np.__version__, {"version": np.__version__})),
        ("onnxruntime", ("ort-cpu", "ort-cuda", "ort-trt", "export", "export --trt", "update"), _onnxruntime),
        ("onnx", ("tensorrt", "export", "export --trt", "update"), _onnx),
        ("cuda", ("tensorrt", "export --trt"), _cuda),
        ("gpu", ("ort-cuda", "ort-trt", "tensorrt", "export --trt"), _gpus),
        ("tensorrt", ("tensorrt", "export --trt"), _tensorrt),
        ("torch", ("train", "export", "export --trt", "update"), torch_probe or probe_torch),
        ("serve", ("serve",), _serve),
        ("jetson", (), partial(probe_jetson, nv_tegra_release)),
        *((f"backend {name}", (name,), partial(_backend, name)) for name in BACKENDS),
    ]
    return _backends_in_context([_guarded(name, enables, probe) for name, enables, probe in probes])


def _backends_in_context(checks: list[Check]) -> Report:
    """Name the backend ``--backend auto`` takes (the registry's first available of AUTO_ORDER), and warn
    about one the registry offers that other checks block: onnxruntime-gpu in a container without the
    GPU offers CUDAExecutionProvider, and auto would pick a backend that fails on its first graph."""
    blockers = Report(tuple(checks)).blockers()
    offered = [name for name in AUTO_ORDER if any(c.name == f"backend {name}" and c.status == OK for c in checks)]
    runs = [name for name in offered if not blockers[name]]
    for i, line in enumerate(checks):
        name = line.name.removeprefix("backend ")
        if name == line.name or name not in offered:  # not a backend line, or one the registry refuses
            continue
        auto = "; --backend auto picks it" if offered[0] == name else ""
        if blockers[name]:
            instead = f": pass --backend {runs[0]}" if auto and runs else ""
            auto = f"{auto} all the same{instead}" if auto else ""
            failing = f"the {', '.join(blockers[name])} check{'s fail' if len(blockers[name]) > 1 else ' fails'}"
            checks[i] = dataclasses.replace(line, status=WARN, detail=f"the registry offers it, but {failing} "
                                            f"here{auto}")
        else:
            checks[i] = dataclasses.replace(line, detail=f"{line.detail}{auto}")
    return Report(tuple(checks))


def format_report(report: Report) -> str:
    """One line per check (status, name, detail), then what runs here and what blocks the rest."""
    width = max(len(c.name) for c in report.checks)
    lines = [f"{c.status:<7} {c.name:<{width}}  {c.detail}" for c in report.checks]
    blockers = report.blockers()
    here = [cap for cap, names in blockers.items() if not names]
    absent = [f"{cap} ({', '.join(names)})" for cap, names in blockers.items() if names]
    lines.append(f"runs here: {', '.join(here) or 'nothing'}" + (f"; not here: {', '.join(absent)}" if absent else ""))
    return "\n".join(lines)
