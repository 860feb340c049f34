"""The runtime: torch-free prediction, on-device updates inside the budget, versions, crash safety."""

from __future__ import annotations

import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ORDER, UPDATE, invoke, ok, write_npz  # the fixture `base` is in conftest
from memo_edge.data.datasets import load_dataset
from memo_edge.errors import InputError
from memo_edge.runtime import PackageError, load, open_package
from memo_edge.runtime.package import CATALOG
from memo_edge.runtime.versions import list_versions


def accuracy_on_all_digits(package: Path) -> float:
    rt = load(package, backend="ort-cpu")
    test = load_dataset("digits").test
    labels, _ = rt.predict(test.take(np.arange(len(test))))
    predicted = np.array([int(rt.class_names[k]) for k in labels])
    return 100.0 * float(np.mean(predicted == test.labels))


def _copy(package: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(package, dest)
    return dest


def _exemplar_rows(package: Path, version: int) -> dict[int, list[bytes]]:
    conn = sqlite3.connect(package / CATALOG)
    rows = conn.execute("SELECT label, rank, image FROM exemplars WHERE version = ? ORDER BY label, rank",
                        (version,)).fetchall()
    conn.close()
    out: dict[int, list[bytes]] = {}
    for label, _, image in rows:
        out.setdefault(label, []).append(image)
    return out


@pytest.mark.slow
def test_updates_on_the_device_stay_in_budget_and_match_a_workstation_run(base: dict[str, Path], digits_run: Path,
                                                                           tmp_path: Path) -> None:
    pkg = _copy(base["pkg"], tmp_path / "pkg")
    total = open_package(pkg).manifest.budget.total_bytes
    for version, task in ((2, "task4"), (3, "task5")):
        before = _exemplar_rows(pkg, version - 1)
        ok("update", pkg, "--data", f"npz:{base[task]}", *UPDATE)
        m = open_package(pkg).manifest
        assert m.version == version and m.budget.total_bytes == total
        assert m.budget.model_bytes + m.budget.exemplar_bytes <= total
        after = _exemplar_rows(pkg, version)
        for label, images in before.items():  # every old class keeps its herding prefix
            assert 1 <= len(after[label]) <= len(images) and after[label] == images[: len(after[label])]
    assert len(open_package(pkg).manifest.class_names) == 10

    device = accuracy_on_all_digits(pkg)
    workstation = json.loads((digits_run / "results.json").read_text())["summary"]["last_accuracy"]
    print(f"10-class accuracy: device updates {device:.1f}%, one workstation run {workstation:.1f}%")
    assert device > 50.0  # chance: 10%
    assert abs(device - workstation) <= 10.0


def test_runtime_predictions_equal_the_exported_onnx_results(base: dict[str, Path]) -> None:
    from memo_edge.runtime.backends import OrtCpuBackend
    from memo_edge.runtime.head import softmax

    version = open_package(base["pkg"])
    images = load_dataset("digits").test.take(np.arange(64))
    labels, scores = load(base["pkg"]).predict(images)
    reference = softmax(OrtCpuBackend(version).logits(images))
    np.testing.assert_allclose(scores, reference, rtol=1e-6, atol=1e-7)
    assert np.array_equal(labels, reference.argmax(1))
    # float NCHW in [0, 1] gives the same answer as the uint8 images it came from
    as_float = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    assert np.array_equal(load(base["pkg"]).predict(as_float)[0], labels)


def test_bad_batches_are_refused_with_the_expected_shape(base: dict[str, Path]) -> None:
    rt = load(base["pkg"])
    for bad in (np.zeros((2, 28, 28, 3), np.uint8), np.zeros((2, 32, 32), np.uint8), np.zeros((2, 32, 32, 3), np.int64)):
        with pytest.raises(InputError, match=r"uint8 \[N,32,32,3\]"):
            rt.predict(bad)


def test_predict_cli_writes_json_lines(base: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    images = load_dataset("digits").test.take(np.arange(3))
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
    np.savez(tmp_path / "batch.npz", x=images)
    result = invoke("predict", base["pkg"], tmp_path / "0.png", tmp_path / "batch.npz", "--top", "3")
    lines = [json.loads(line) for line in result.output.strip().splitlines()]
    assert result.exit_code == 0 and len(lines) == 4
    assert all(len(line["top"]) == 3 and line["top"][0]["score"] >= line["top"][1]["score"] for line in lines)
    assert lines[0]["top"][0]["class"] == lines[1]["top"][0]["class"]  # same image as file and in the npz


def _snapshot(package: Path) -> tuple[list, dict[str, bytes]]:
    return [v.version for v in list_versions(package)], {p.name: p.read_bytes() for p in package.iterdir() if p.is_file()
                                                         and p.suffix in (".onnx", ".safetensors")}


def test_class_name_clash_is_refused_and_nothing_changes(base: dict[str, Path], tmp_path: Path) -> None:
    pkg = _copy(base["pkg"], tmp_path / "pkg")
    clash = write_npz(tmp_path / "clash", list(ORDER[6:8]), names=[str(ORDER[0]), "new"])
    before = _snapshot(pkg)
    result = invoke("update", pkg, "--data", f"npz:{clash}", *UPDATE)
    assert result.exit_code == 2 and "already in the package" in result.output and str(ORDER[0]) in result.output
    assert _snapshot(pkg) == before


def test_a_task_the_budget_cannot_fit_is_refused_before_training(base: dict[str, Path], tmp_path: Path) -> None:
    from memo_edge.export.exporter import package_model
    from memo_edge.train.checkpoint import load_checkpoint

    # One exemplar per class and not a byte more: the next branch cannot fit.
    ckpt, m = load_checkpoint(base["root"] / "run", 2), open_package(base["pkg"]).manifest
    exemplars = ckpt.exemplars.reduce(1)
    pkg = tmp_path / "tight"
    package_model(pkg, ckpt.model, exemplars, spec=m.input, class_names=m.class_names, augment="cifar",
                  total_budget_bytes=m.budget.model_bytes + exemplars.nbytes, verify_images=exemplars.images)
    before = _snapshot(pkg)
    result = invoke("update", pkg, "--data", f"npz:{base['task4']}", *UPDATE)
    assert result.exit_code == 2 and "B missing" in result.output and "Nothing was changed" in result.output
    assert _snapshot(pkg) == before


def test_the_database_refuses_exemplars_beyond_the_budget(base: dict[str, Path], tmp_path: Path) -> None:
    pkg = _copy(base["pkg"], tmp_path / "pkg")
    b = open_package(pkg).manifest.budget
    room = b.total_bytes - b.model_bytes - b.exemplar_bytes
    conn = sqlite3.connect(pkg / CATALOG)
    with pytest.raises(sqlite3.IntegrityError, match="exemplar budget exceeded"):
        conn.execute("INSERT INTO exemplars VALUES (1, 0, 999, 0, ?)", (b"\0" * (room + 1),))
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        conn.execute("UPDATE exemplars SET image = image || image WHERE version = 1")
    conn.close()


def _update_in_subprocess(package: Path, data: Path, crash_at: str | None, *, kill_in_training: bool = False) -> int:
    """Run ``update`` in a child; it kills itself at ``crash_at``, or is killed once it has trained an epoch."""
    env = {**os.environ, **({"MEMO_EDGE_CRASH_AT": crash_at} if crash_at else {})}
    epochs = "500" if kill_in_training else "2"  # long enough to be killed mid-training
    # -v logs "task K epoch E: loss L" after each epoch: the observable proof that training runs.
    cmd = [sys.executable, "-m", "memo_edge.cli", "-v", "update", str(package), "--data", f"npz:{data}",
           "--epochs", epochs, "--batch-size", "32", "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE if kill_in_training else subprocess.DEVNULL)
    try:
        if kill_in_training:
            # Not a fixed sleep: on a slow or busy machine the kill could land before training
            # starts (the test would then prove nothing); an epoch's loss line cannot come earlier.
            _wait_for_stderr(proc, "epoch 1: loss")
            proc.send_signal(signal.SIGKILL)
        return proc.wait(timeout=300)
    finally:
        proc.kill()
        if proc.stderr is not None:
            proc.stderr.close()


def _wait_for_stderr(proc: subprocess.Popen, fragment: str, limit: float = 120.0) -> None:
    """Read ``proc``'s stderr until it contains ``fragment``; fail if the child exits or ``limit`` s pass."""
    assert proc.stderr is not None
    fd, seen, deadline = proc.stderr.fileno(), b"", time.monotonic() + limit
    while fragment.encode() not in seen:
        assert time.monotonic() < deadline, f"no {fragment!r} within {limit} s: {seen.decode(errors='replace')}"
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"update exited before {fragment!r}: {seen.decode(errors='replace')}"
            seen += chunk


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", ["training", "files-written", "before-commit"])
def test_a_killed_update_leaves_the_previous_version_usable(base: dict[str, Path], tmp_path: Path, crash_at: str) -> None:
    pkg = _copy(base["pkg"], tmp_path / "pkg")
    expected = load(pkg).predict(load_dataset("digits").test.take(np.arange(32)))[1]
    code = _update_in_subprocess(pkg, base["task4"], None if crash_at == "training" else crash_at,
                                 kill_in_training=crash_at == "training")
    assert code == -signal.SIGKILL
    version = open_package(pkg)  # verifies every file of the current version
    assert version.manifest.version == 1 and [v.version for v in list_versions(pkg)] == [1]
    np.testing.assert_array_equal(load(pkg).predict(load_dataset("digits").test.take(np.arange(32)))[1], expected)
    # ... and the next update still works, collecting what the killed one left behind.
    ok("update", pkg, "--data", f"npz:{base['task4']}", "--epochs", "1", "--device", "cpu")
    assert open_package(pkg).manifest.version == 2
    assert not list(pkg.glob(".*.tmp"))


@pytest.mark.slow
def test_kill_right_after_the_commit_leaves_the_new_version(base: dict[str, Path], tmp_path: Path) -> None:
    pkg = _copy(base["pkg"], tmp_path / "pkg")
    assert _update_in_subprocess(pkg, base["task4"], "after-commit") == -signal.SIGKILL
    assert open_package(pkg).manifest.version == 2
    assert load(pkg).predict(np.zeros((1, 32, 32, 3), np.uint8))[1].shape == (1, 8)


@pytest.mark.slow
def test_rollback_and_garbage_collection(base: dict[str, Path], tmp_path: Path) -> None:
    pkg = _copy(base["pkg"], tmp_path / "pkg")
    images = load_dataset("digits").test.take(np.arange(16))
    reader = load(pkg)  # a reader of version 1 ...
    before, exemplars_before = reader.predict(images)[1], reader.package.exemplars()[0]
    ok("update", pkg, "--data", f"npz:{base['task4']}", "--epochs", "1", "--device", "cpu")
    # ... keeps a consistent view of it while version 2 is committed
    np.testing.assert_array_equal(reader.predict(images)[1], before)
    assert reader.package.exemplars()[0] == exemplars_before and open_package(pkg).manifest.version == 2
    ok("update", pkg, "--data", f"npz:{base['task5']}", "--epochs", "1", "--device", "cpu")
    # Only the last 2 versions are kept, with exactly the files they reference.
    assert [v.version for v in list_versions(pkg)] == [2, 3]
    with pytest.raises(PackageError, match="no version 1"):
        open_package(pkg, version=1)
    referenced = {f.name for v in (2, 3) for f in open_package(pkg, version=v).manifest.files}
    assert {p.name for p in pkg.iterdir() if p.suffix in (".onnx", ".safetensors")} == referenced

    result = ok("rollback", pkg)
    assert "version 2 is current" in result.output
    rt = load(pkg)
    assert rt.package.manifest.version == 2 and len(rt.class_names) == 8
    assert rt.predict(np.zeros((1, 32, 32, 3), np.uint8))[1].shape == (1, 8)
    result = invoke("rollback", pkg)
    assert result.exit_code == 2 and "nothing to roll back" in result.output


def test_new_classes_from_class_folders(base: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    from memo_edge.device.update import load_new_classes

    digits = load_dataset("digits").train
    for name, digit in (("seven", 7), ("eight", 8)):
        (tmp_path / "new" / name).mkdir(parents=True)
        for i, k in enumerate(np.flatnonzero(digits.labels == digit)[:5]):
            Image.fromarray(digits.take(np.array([k]))[0]).save(tmp_path / "new" / name / f"{i}.png")
    source, names = load_new_classes(str(tmp_path / "new"), open_package(base["pkg"]).manifest)
    assert names == ("eight", "seven") and len(source) == 10 and source.image_shape == (32, 32, 3)
    assert sorted(source.labels.tolist()) == [0] * 5 + [1] * 5
    np.testing.assert_array_equal(source.take(np.array([5])), digits.take(np.flatnonzero(digits.labels == 7)[:1]))
