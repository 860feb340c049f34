"""Export: ONNX graphs agree with PyTorch, the package is verified on read, and export is all-or-nothing."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import invoke, rewrite_manifest
from memo_edge.data.datasets import load_dataset
from memo_edge.data.scenario import Scenario, remap, task_subset
from memo_edge.export.graphs import Preprocess, initializer_names
from memo_edge.runtime.backends import OrtCpuBackend
from memo_edge.runtime.lock import writer_lock
from memo_edge.runtime.package import CATALOG, PackageError, open_package
from memo_edge.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained run: digits, 3 tasks (4, 4, 2 classes), a tiny backbone."""
    out = tmp_path_factory.mktemp("export") / "run"
    result = invoke("train", "--dataset", "digits", "--scenario", "B0Inc4", "--backbone", "resnet8",
                    "--init-epochs", "4", "--epochs", "3", "--batch-size", "32", "--schedule", "cosine",
                    "--memory", "60", "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def export(run: Path, out: Path, *extra: object) -> Path:
    result = invoke("export", run, "--out", out, *extra)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def package(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(run, tmp_path_factory.mktemp("pkg") / "pkg")


def _test_images(run: Path, task: int) -> tuple[np.ndarray, np.ndarray]:
    header = json.loads((run / "config.json").read_text())
    scenario = Scenario.from_json(header["scenario"])
    test = task_subset(remap(load_dataset("digits").test, scenario), scenario, task, seen=True)
    return test.take(np.arange(len(test))), test.labels


@pytest.mark.parametrize("task", [0, 2])
def test_onnx_runtime_matches_pytorch(run: Path, tmp_path: Path, task: int) -> None:
    pkg = open_package(export(run, tmp_path / f"pkg{task}", "--task", task))
    assert len(pkg.manifest.branches()) == task + 1
    model = load_checkpoint(run, task).model.eval()
    images, _ = _test_images(run, task)
    spec = pkg.manifest.input
    with torch.no_grad():
        reference = model(Preprocess(spec.mean, spec.std)(torch.from_numpy(images))).logits.numpy()
    backend = OrtCpuBackend(pkg)
    for logits in (backend.head(backend.features(images)), backend.full_logits(images)):
        assert np.allclose(logits, reference, rtol=1e-4, atol=1e-4)
        assert np.array_equal(logits.argmax(1), reference.argmax(1))
    verification = pkg.manifest.verification
    assert verification["passed"] and verification["graphs"]["end_to_end"]["top1_agreement"] == 1.0
    assert set(verification["graphs"]) == {"trunk", "end_to_end", "full", *(f"branch-{t}" for t in range(task + 1))}


def test_export_of_an_earlier_task_reproduces_its_accuracy(run: Path, tmp_path: Path) -> None:
    results = json.loads((run / "results.json").read_text())
    for task in (1, 2):
        backend = OrtCpuBackend(open_package(export(run, tmp_path / f"p{task}", "--task", task)))
        images, labels = _test_images(run, task)
        accuracy = 100.0 * np.mean(backend.logits(images).argmax(1) == labels)
        assert accuracy == pytest.approx(results["tasks"][task]["metrics"]["top1"], abs=1e-6)


def test_branch_graphs_share_initializer_names(package: Path) -> None:
    pkg = open_package(package)
    names = [initializer_names(pkg.path(entry).read_bytes()) for entry in pkg.manifest.branches()]
    assert len(names) == 3 and names[0] == names[1] == names[2] and names[0]


def test_manifest_describes_the_package(package: Path, run: Path) -> None:
    m = open_package(package).manifest
    header = json.loads((run / "config.json").read_text())
    assert m.class_names == tuple(header["class_names"])
    assert m.task_classes == ((0, 4), (4, 8), (8, 10))
    assert {f.role for f in m.files} == {"trunk", "branch", "full", "head", "weights-trunk", "weights-branch",
                                         "weights-head"}
    assert m.budget.model_bytes + m.budget.exemplar_bytes <= m.budget.total_bytes
    assert m.budget.exemplars == 60 and m.budget.exemplar_bytes == 60 * 3072
    assert m.opset == 17 and m.producer["opset"] == "17" and "torch" in m.producer
    exemplars, tasks = open_package(package).exemplars()
    assert len(exemplars) == 60 and set(tasks.tolist()) == {0, 1, 2}
    for entry in m.files:  # content-addressed plain names
        assert entry.name.startswith(entry.sha256) and "/" not in entry.name


@pytest.mark.parametrize("role", ["trunk", "branch", "full", "head", "weights-trunk", "weights-branch", "weights-head"])
def test_one_flipped_byte_is_refused_naming_the_file(package: Path, tmp_path: Path, role: str) -> None:
    import shutil

    copy = tmp_path / "pkg"
    shutil.copytree(package, copy)
    entry = next(f for f in open_package(copy).manifest.files if f.role == role)
    data = bytearray((copy / entry.name).read_bytes())
    data[len(data) // 3] ^= 0x01
    (copy / entry.name).write_bytes(bytes(data))
    with pytest.raises(PackageError, match=entry.name) as err:
        open_package(copy)
    assert entry.sha256 in str(err.value)  # says what was expected
    result = invoke("info", copy)
    assert result.exit_code == 2 and entry.name in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("bad_name", ["../x", "/etc/passwd", "sub/dir.onnx", ".hidden"])
def test_unsafe_names_in_a_manifest_are_refused(package: Path, tmp_path: Path, bad_name: str) -> None:
    import shutil

    copy = tmp_path / "pkg"
    shutil.copytree(package, copy)
    rewrite_manifest(copy, lambda m: m["files"][0].update(name=bad_name))
    with pytest.raises(PackageError, match="unsafe file name"):
        open_package(copy)


def test_a_tampered_manifest_is_refused(package: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "pkg"
    shutil.copytree(package, copy)
    conn = sqlite3.connect(copy / CATALOG)
    conn.execute("UPDATE versions SET manifest = replace(manifest, '\"top1_agreement\":1.0', '\"top1_agreement\":0.5')")
    conn.commit()
    conn.close()
    with pytest.raises(PackageError, match="manifest of version 1 is damaged"):
        open_package(copy)


def test_symlinked_file_is_refused(package: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "pkg"
    shutil.copytree(package, copy)
    entry = open_package(copy).manifest.file("head")
    (copy / entry.name).rename(tmp_path / "elsewhere")
    (copy / entry.name).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PackageError, match="symbolic link"):
        open_package(copy)


def test_info_lists_every_file_with_its_size(package: Path) -> None:
    result = invoke("info", package)
    assert result.exit_code == 0, result.output
    for entry in open_package(package).manifest.files:
        assert entry.name in result.output and f"{entry.size:,} B" in result.output
    assert CATALOG in result.output and "verification: passed" in result.output
    assert json.loads(invoke("info", package, "--json").output)["version"] == 1


def test_failed_verification_leaves_no_package(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import memo_edge.export.verify as verify

    monkeypatch.setattr(verify, "REL_TOLERANCE", -1.0)
    result = invoke("export", run, "--out", tmp_path / "pkg")
    assert result.exit_code == 1 and "verification failed" in result.output
    assert not (tmp_path / "pkg").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args,fragment",
    [(["--task", "7"], "task-02"), (["--trt"], "TensorRT")],
)
def test_export_bad_input(run: Path, tmp_path: Path, args: list[str], fragment: str) -> None:
    result = invoke("export", run, "--out", tmp_path / "pkg", *args)
    assert result.exit_code in (1, 2) and fragment in result.output and "Traceback" not in result.output
    assert not (tmp_path / "pkg").exists()


def test_existing_package_needs_force(package: Path, run: Path) -> None:
    result = invoke("export", run, "--out", package)
    assert result.exit_code == 2 and "--force" in result.output


def test_force_is_refused_while_a_writer_works(package: Path, run: Path) -> None:
    before = open_package(package).manifest
    with writer_lock(package, "update"):  # an update at work on the package
        result = invoke("export", run, "--out", package, "--force")
    assert result.exit_code != 0 and "being changed by" in result.output and "(update, since" in result.output
    assert "Traceback" not in result.output
    assert open_package(package).manifest == before  # the package is untouched


def test_force_replaces_a_damaged_package(package: Path, run: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "pkg"
    shutil.copytree(package, damaged)
    (damaged / CATALOG).write_bytes(b"not a catalog")
    with pytest.raises(PackageError):
        open_package(damaged)
    result = invoke("export", run, "--out", damaged, "--force")
    assert result.exit_code == 0, result.output
    assert open_package(damaged).manifest.version == 1


def test_both_onnxruntime_wheels_installed_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata
    from types import SimpleNamespace

    from memo_edge.errors import MemoEdgeError
    from memo_edge.runtime.backends import load_onnxruntime

    fake = [SimpleNamespace(metadata={"Name": n}) for n in ("onnxruntime", "onnxruntime-gpu", "numpy")]
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: fake)
    with pytest.raises(MemoEdgeError, match="both onnxruntime and onnxruntime-gpu"):
        load_onnxruntime()
