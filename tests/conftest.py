"""Shared fixtures: one small trained run and its package, made once per test session."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from click.testing import CliRunner

from memo_edge.cli import main
from memo_edge.data.datasets import load_dataset
from memo_edge.data.scenario import make_class_order
from memo_edge.model.methods import METHODS, method_model_bytes
from memo_edge.runtime.package import InputSpec, PackageVersion

ORDER = make_class_order(10)  # the digits' class order of the reference protocol (seed 1993)


def quick_run(epochs: int = 1, *, batch_size: int = 64, cosine: bool = False, freeze_base: bool = False) -> list[str]:
    """The options of a short training run on the CPU with the tiny resnet8 (``epochs`` for every task)."""
    return ["--backbone", "resnet8", "--init-epochs", str(epochs), "--epochs", str(epochs), "--batch-size",
            str(batch_size), *(["--schedule", "cosine"] if cosine else []), *(["--freeze-base"] if freeze_base else []),
            "--device", "cpu"]


TRAIN = quick_run(8, batch_size=32, cosine=True, freeze_base=True)  # the session's run: learns the digits well
UPDATE = ["--epochs", "8", "--batch-size", "32", "--schedule", "cosine", "--device", "cpu"]


SPEC = InputSpec(32, 32, 3, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3))


def make_package(out: Path, *, tasks: int = 2, classes: int = 3, int8: bool = False) -> tuple[object, PackageVersion]:
    """A random ResNet-8 MEMO (the MemoNet) with ``tasks`` tasks, packaged (and verified) like an export."""
    import torch

    from memo_edge.export.exporter import package_model
    from memo_edge.memory.exemplars import ExemplarSet
    from memo_edge.model import MemoNet

    torch.manual_seed(0)
    model = MemoNet("resnet8")
    for _ in range(tasks):
        model.expand(classes)
        with torch.no_grad():  # expand copies the previous branch: make each one its own
            for p in model.branches[-1].parameters():
                p.add_(0.05 * torch.randn_like(p))
    model.eval()
    rng = np.random.default_rng(0)
    labels = np.arange(model.num_classes, dtype=np.int64)
    exemplars = ExemplarSet(rng.integers(0, 256, (len(labels), *SPEC.shape), dtype=np.uint8), labels,
                            np.zeros(len(labels), np.int64))
    version = package_model(out, model, exemplars, spec=SPEC, class_names=[f"c{i}" for i in range(model.num_classes)],
                            augment="cifar", total_budget_bytes=model.model_bytes() + exemplars.nbytes,
                            verify_images=rng.integers(0, 256, (8, *SPEC.shape), dtype=np.uint8), int8=int8)
    return model, version


def invoke(*args: object):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def ok(*args: object):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def write_npz(root: Path, classes: list[int], names: list[str] | None = None) -> Path:
    """digits images of ``classes`` (original ids) as an npz dataset, labelled 0..k-1 in that order."""
    digits = load_dataset("digits")
    root.mkdir(parents=True)
    files = []
    for split, source in (("train", digits.train), ("test", digits.test)):
        keep = np.flatnonzero(np.isin(source.labels, classes))
        y = np.array([classes.index(int(c)) for c in source.labels[keep]])
        np.savez(root / f"{split}-00.npz", x=source.take(keep), y=y)
        files.append({"file": f"{split}-00.npz", "sha256": hashlib.sha256((root / f"{split}-00.npz").read_bytes()).hexdigest()})
    names = names or [str(c) for c in classes]
    (root / "meta.json").write_text(json.dumps({"class_names": names, "files": files}))
    return root


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tasks 1-3 (6 classes) trained and exported; tasks 4 and 5 as npz datasets for the device."""
    root = tmp_path_factory.mktemp("runtime")
    first = write_npz(root / "first6", list(ORDER[:6]))
    ok("train", "--dataset", f"npz:{first}", "--scenario", "B0Inc2", "--no-shuffle", "--memory", "200",
       "--out", root / "run", *TRAIN)
    # Budget: the model after 5 tasks + 200 exemplars, as a DER-style total fixed at export.
    total = method_model_bytes(METHODS["memo"], "resnet8", 5) + 200 * 3072
    ok("export", root / "run", "--out", root / "pkg", "--total-budget", total)
    return {"root": root, "pkg": root / "pkg", "task4": write_npz(root / "task4", list(ORDER[6:8])),
            "task5": write_npz(root / "task5", list(ORDER[8:10]))}


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 10 digits (5 tasks of 2, the reference class order) trained on a workstation as the session's
    package was: what the device's updates are compared with, and the end-to-end accuracy check."""
    out = tmp_path_factory.mktemp("digits") / "run"
    ok("train", "--dataset", "digits", "--scenario", "B0Inc2", "--class-order", ",".join(map(str, ORDER)),
       "--memory", "200", "--out", out, *TRAIN)
    return out


def rewrite_manifest(package: Path, edit) -> None:
    """Change version 1's manifest with ``edit(dict)`` and give it a valid sha256: only the checks that
    read the manifest's content can catch it."""
    conn = sqlite3.connect(package / "catalog.sqlite")
    data = json.loads(conn.execute("SELECT manifest FROM versions WHERE version = 1").fetchone()[0])
    edit(data)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    conn.execute("UPDATE versions SET manifest = ?, manifest_sha256 = ? WHERE version = 1",
                 (text, hashlib.sha256(text.encode()).hexdigest()))
    conn.commit()
    conn.close()


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` by sha256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass(frozen=True)
class Server:
    proc: subprocess.Popen
    url: str
    log: Path  # its stdout and stderr (a file: a pipe nobody reads would fill up and stall the server)


@contextlib.contextmanager
def served(package: Path, *options: str, ready_within: float = 60) -> Iterator[Server]:
    """A real ``memo-edge serve`` process on a free loopback port, once /ready answers; SIGTERM at the end
    (if still running). Its output goes to a file beside the package."""
    port = free_port()
    log = package.parent / f"serve-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "memo_edge", "serve", str(package), "--port", str(port),
                                 "--backend", "ort-cpu", *options], stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + ready_within
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the server never became ready"
            try:
                if httpx.get(f"{server.url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)  # nothing to await: the port opens when uvicorn is up
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def npy(x: np.ndarray) -> bytes:
    """An .npy body (what the service's /predict takes)."""
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def png(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="PNG")
    return buf.getvalue()
