"""Package safety under an adversarial user: versions after rollback, one writer at a time, damaged
catalogs, inconsistent manifests, read-only storage and OS errors. Real processes where it matters."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import invoke, ok, rewrite_manifest, tree_digest
from memo_edge.data.datasets import load_dataset
from memo_edge.errors import InputError
from memo_edge.runtime import PackageError, load, open_package
from memo_edge.runtime.lock import LOCK_FILE
from memo_edge.runtime.catalog import CATALOG
from memo_edge.runtime.manifest import manifest_problem
from memo_edge.runtime.versions import list_versions

FAST_UPDATE = ["--epochs", "1", "--batch-size", "32", "--device", "cpu"]


def copy(package: Path, dest: Path) -> Path:
    shutil.copytree(package, dest)
    return dest


def cli(*args: object, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memo_edge.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def assert_one_line_refusal(result, code: int, *fragments: str) -> None:
    output = result.output if hasattr(result, "output") else result.stdout + result.stderr
    exit_code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    assert exit_code == code, output
    assert "Traceback" not in output, output
    lines = [line for line in output.strip().splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, output
    for fragment in fragments:
        assert fragment in lines[0], output


# -- A: versions after a rollback ------------------------------------------------------------------


@pytest.mark.slow
def test_update_after_rollback_commits_a_new_version(base: dict[str, Path], tmp_path: Path) -> None:
    pkg = copy(base["pkg"], tmp_path / "pkg")
    ok("update", pkg, "--data", f"npz:{base['task4']}", *FAST_UPDATE)
    assert "version 1 is current" in ok("rollback", pkg).output
    result = ok("update", pkg, "--data", f"npz:{base['task4']}", *FAST_UPDATE)
    assert "version 3 with 4 tasks" in result.output
    versions = {v.version: v for v in list_versions(pkg)}
    assert versions[3].current and versions[3].parent == 1 and set(versions) == {1, 2, 3}
    ok("rollback", pkg)  # back to 1, and forward again once more
    assert open_package(pkg).manifest.version == 1
    ok("update", pkg, "--data", f"npz:{base['task4']}", *FAST_UPDATE)
    current = open_package(pkg).manifest
    assert current.version == 4 and current.parent == 1 and len(current.class_names) == 8
    referenced = {f.name for v in list_versions(pkg) for f in open_package(pkg, version=v.version).manifest.files}
    assert {p.name for p in pkg.iterdir() if p.suffix in (".onnx", ".safetensors")} == referenced


def test_a_failed_update_removes_what_it_wrote(base: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import memo_edge.runtime.writer as writer

    pkg = copy(base["pkg"], tmp_path / "pkg")
    before = tree_digest(pkg)

    def refuse(*args: object, **kwargs: object) -> None:
        raise PackageError("refused at the commit (test)")

    monkeypatch.setattr(writer, "add_version", refuse)  # the files are written, the commit fails
    result = invoke("update", pkg, "--data", f"npz:{base['task4']}", *FAST_UPDATE)
    assert_one_line_refusal(result, 2, "refused at the commit")
    assert tree_digest(pkg) == before and not list(pkg.glob(".*.tmp"))


def test_a_commit_on_a_changed_current_version_is_refused(base: dict[str, Path], tmp_path: Path) -> None:
    from memo_edge.runtime.catalog import catalog
    from memo_edge.runtime.writer import PackageWriter

    pkg = copy(base["pkg"], tmp_path / "pkg")
    with pytest.raises(PackageError, match="version 1 became current meanwhile; not applied"):
        with PackageWriter.append(pkg, "test") as writer:
            version = writer.current
            exemplars, tasks = version.exemplars()
            writer.parent = 7  # derived from a version not current
            writer.commit(version.manifest, exemplars, tasks, keep=version.manifest.files)
    with catalog(pkg) as conn:  # nothing was inserted
        assert conn.execute("SELECT COUNT(*) FROM versions").fetchone()[0] == 1


# -- B: one writer at a time (real processes) ------------------------------------------------------


def _start_update(pkg: Path, data: Path, epochs: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "memo_edge.cli", "update", str(pkg), "--data", f"npz:{data}", "--epochs", str(epochs),
           "--batch-size", "32", "--device", "cpu"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_lock(pkg: Path, proc: subprocess.Popen, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if json.loads((pkg / LOCK_FILE).read_text() or "{}").get("pid") == proc.pid:
                return
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError("the update never took the writer lock")


@pytest.mark.slow
def test_a_second_writer_is_refused_at_once_and_the_first_commits(base: dict[str, Path], tmp_path: Path) -> None:
    pkg = copy(base["pkg"], tmp_path / "pkg")
    first = _start_update(pkg, base["task4"], epochs=30)
    try:
        _wait_for_lock(pkg, first)
        # Both contenders at once, so the first update is surely still training when they ask.
        contenders = [subprocess.Popen([sys.executable, "-m", "memo_edge.cli", *map(str, args)], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
                      for args in (("update", pkg, "--data", f"npz:{base['task5']}", *FAST_UPDATE), ("rollback", pkg))]
        (second, rolled) = [(c.communicate(timeout=300), c.returncode) for c in contenders]
        assert first.poll() is None, "the refusals came after the first update had finished: the test proves nothing"
        for (out, err), code in (second, rolled):
            assert code == 2 and "Traceback" not in err, out + err
            assert f"pid {first.pid}" in err and "one writer at a time" in err, err
        out, err = first.communicate(timeout=900)
    finally:
        first.kill()
    assert first.returncode == 0, err
    assert "version 2 with 4 tasks" in out  # what the user was told is what the package holds
    m = open_package(pkg).manifest
    assert m.version == 2 and m.parent == 1 and [v.version for v in list_versions(pkg)] == [1, 2]


@pytest.mark.slow
def test_a_killed_writer_leaves_no_lock_behind(base: dict[str, Path], tmp_path: Path) -> None:
    pkg = copy(base["pkg"], tmp_path / "pkg")
    first = _start_update(pkg, base["task4"], epochs=500)
    _wait_for_lock(pkg, first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert (pkg / LOCK_FILE).exists()  # the file stays; the lock went with the process
    result = invoke("rollback", pkg)
    assert result.exit_code == 2 and "nothing to roll back" in result.output
    ok("update", pkg, "--data", f"npz:{base['task4']}", *FAST_UPDATE)
    assert open_package(pkg).manifest.version == 2
    assert not (pkg / LOCK_FILE).exists()  # removed by the writer that ended normally


# -- C and 8: damaged catalogs ---------------------------------------------------------------------


def _leaf_page_of_exemplars(catalog: Path) -> int:
    conn = sqlite3.connect(catalog)
    try:
        row = conn.execute("SELECT pageno FROM dbstat WHERE name = 'exemplars' AND pagetype = 'leaf' "
                           "ORDER BY pageno LIMIT 1 OFFSET 3").fetchone()
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no dbstat table to find an exemplar page")
    finally:
        conn.close()
    return (row[0] - 1) * page_size


def test_flipped_catalog_pages_are_reported_by_info_and_refused_by_update(base: dict[str, Path], tmp_path: Path) -> None:
    pkg = copy(base["pkg"], tmp_path / "pkg")
    offset = _leaf_page_of_exemplars(pkg / CATALOG)
    data = bytearray((pkg / CATALOG).read_bytes())
    for k in range(8):  # the page header: type, freeblock, cell count
        data[offset + k] ^= 0xA5
    (pkg / CATALOG).write_bytes(bytes(data))
    before = tree_digest(pkg)

    assert_one_line_refusal(invoke("info", pkg), 2, "is damaged", "SQLite's integrity check")
    assert_one_line_refusal(invoke("update", pkg, "--data", f"npz:{base['task4']}", *FAST_UPDATE), 2, "is damaged")
    assert_one_line_refusal(invoke("rollback", pkg), 2, "is damaged")
    assert tree_digest(pkg) == before


def test_flipped_exemplar_pixels_are_reported_by_info(base: dict[str, Path], tmp_path: Path) -> None:
    pkg = copy(base["pkg"], tmp_path / "pkg")
    image = open_package(pkg).exemplars()[0].images[5].tobytes()
    data = bytearray((pkg / CATALOG).read_bytes())
    where = data.find(image[:256])
    assert where > 0
    data[where + 100] ^= 0x01  # one pixel: SQLite's structure is intact, the exemplar digest is not
    (pkg / CATALOG).write_bytes(bytes(data))
    assert sqlite3.connect(pkg / CATALOG).execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    assert_one_line_refusal(invoke("info", pkg), 2, "exemplars of version 1 are damaged")
    before = tree_digest(pkg)
    assert_one_line_refusal(invoke("update", pkg, "--data", f"npz:{base['task4']}", *FAST_UPDATE), 2,
                            "exemplars of version 1 are damaged")
    assert tree_digest(pkg) == before


def test_info_reports_the_full_check(base: dict[str, Path]) -> None:
    result = ok("info", base["pkg"])
    assert "package check: passed: SQLite integrity, versions 1" in result.output
    assert "exemplar rows" in result.output


# -- 5: manifests that contradict themselves -------------------------------------------------------


@pytest.mark.parametrize(("edit", "field"), [
    (lambda m: m["class_names"].pop(), "task_classes"),
    (lambda m: m["class_names"].__setitem__(1, m["class_names"][0]), "class_names: repeated"),
    (lambda m: m["budget"].__setitem__("model_bytes", m["budget"]["total_bytes"]), "budget"),
    (lambda m: m.__setitem__("files", [f for f in m["files"] if f["role"] != "head"]), "files: no head"),
    (lambda m: m["input"].pop("height"), "input"),
    (lambda m: m.pop("budget"), "lacks the field 'budget'"),
])
def test_an_inconsistent_manifest_is_refused_naming_the_field(base: dict[str, Path], tmp_path: Path, edit,
                                                              field: str) -> None:
    pkg = copy(base["pkg"], tmp_path / "pkg")
    rewrite_manifest(pkg, edit)
    with pytest.raises(PackageError, match="manifest of version 1") as caught:
        load(pkg)
    assert field in str(caught.value)
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 32, 32, 3), np.uint8))
    for result in (invoke("predict", pkg, tmp_path / "x.npz"), invoke("info", pkg)):
        assert_one_line_refusal(result, 2, field)


def test_a_head_of_another_size_than_the_class_list_is_refused(base: dict[str, Path], tmp_path: Path) -> None:
    pkg = copy(base["pkg"], tmp_path / "pkg")

    def five_classes(m: dict) -> None:  # consistent with itself, not with the head's 6 rows
        m["class_names"].pop()
        m["task_classes"][-1][1] -= 1
        m["model"]["task_sizes"][-1] -= 1
        m["files"] = [f for f in m["files"] if f["role"] not in ("full", "full-int8")]  # logits from the head

    rewrite_manifest(pkg, five_classes)
    with pytest.raises(PackageError, match="the head has 6 classes, the manifest of version 1 names 5"):
        load(pkg, backend="ort-cpu")


def test_manifest_problem_accepts_what_export_writes(base: dict[str, Path]) -> None:
    assert manifest_problem(open_package(base["pkg"]).manifest) is None


# -- 2 and 9: read-only storage, and readers that write nothing --------------------------------------


def _can_mount_readonly(tmp: Path) -> bool:
    probe = tmp / "probe"
    probe.mkdir()
    result = subprocess.run(["unshare", "-m", "sh", "-c", f'mount --bind -o ro "{probe}" "{probe}" && ! touch "{probe}/x"'],
                            capture_output=True)
    return result.returncode == 0


def readonly_cli(pkg: Path, *args: object) -> subprocess.CompletedProcess:
    """memo-edge with ``pkg`` on read-only storage: a read-only bind mount in a private mount namespace
    as root (where permission bits do not stop writes), or the write bits removed for another user."""
    command = [sys.executable, "-m", "memo_edge.cli", *map(str, args)]
    if os.geteuid() == 0:
        script = f'mount --bind -o ro "{pkg}" "{pkg}" && exec "$@"'
        return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *command], capture_output=True, text=True)
    modes = {p: p.stat().st_mode for p in [pkg, *pkg.rglob("*")]}
    for p in modes:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        return subprocess.run(command, capture_output=True, text=True)
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


@pytest.fixture
def readonly_ok(tmp_path: Path) -> None:
    if os.geteuid() == 0 and not _can_mount_readonly(tmp_path):
        pytest.skip("running as root without a private mount namespace: no way to make a directory read-only")


@pytest.mark.slow
@pytest.mark.parametrize("legacy_wal", [False, True], ids=["catalog", "catalog-in-wal-mode"])
def test_a_package_on_read_only_storage_opens_predicts_and_refuses_writes(
        base: dict[str, Path], tmp_path: Path, readonly_ok: None, legacy_wal: bool) -> None:
    pkg = copy(base["pkg"], tmp_path / "pkg")
    if legacy_wal:  # as packages of earlier memo-edge versions were left: WAL mode, checkpointed
        conn = sqlite3.connect(pkg / CATALOG)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        assert not (pkg / f"{CATALOG}-wal").exists()
    before = tree_digest(pkg)
    images = tmp_path / "images.npz"
    np.savez(images, x=load_dataset("digits").test.take(np.arange(4)))

    info = readonly_cli(pkg, "info", pkg)
    assert info.returncode == 0 and "package check: passed" in info.stdout, info.stderr
    predict = readonly_cli(pkg, "predict", pkg, images)
    assert predict.returncode == 0, predict.stderr
    assert [json.loads(line)["top"][0]["class"] for line in predict.stdout.splitlines()] == \
        [load(base["pkg"]).class_names[k] for k in load(base["pkg"]).predict(np.load(images)["x"])[0]]
    for args in (("update", pkg, "--data", f"npz:{base['task4']}", *FAST_UPDATE), ("rollback", pkg)):
        result = readonly_cli(pkg, *args)
        assert_one_line_refusal(result, 2, f"{pkg} is read-only", "writable storage")
    assert tree_digest(pkg) == before


def test_readers_create_no_files_in_the_package(base: dict[str, Path], tmp_path: Path) -> None:
    pkg = copy(base["pkg"], tmp_path / "pkg")
    before = sorted(p.name for p in pkg.iterdir())
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 32, 32, 3), np.uint8))
    ok("info", pkg)
    ok("predict", pkg, tmp_path / "x.npz")
    load(pkg).package.exemplars()
    assert sorted(p.name for p in pkg.iterdir()) == before  # no -wal, -shm or -journal files
    assert not any(name.startswith(CATALOG + "-") for name in before)


@pytest.mark.slow
def test_a_package_is_one_self_contained_catalog_after_every_write(base: dict[str, Path], tmp_path: Path) -> None:
    pkg = copy(base["pkg"], tmp_path / "pkg")
    ok("update", pkg, "--data", f"npz:{base['task4']}", *FAST_UPDATE)
    ok("rollback", pkg)
    assert not [p.name for p in pkg.iterdir() if p.name.startswith(CATALOG + "-")]
    assert sqlite3.connect(pkg / CATALOG).execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_a_reader_rolls_back_what_a_killed_writer_left(base: dict[str, Path], tmp_path: Path) -> None:
    pkg = copy(base["pkg"], tmp_path / "pkg")
    # Killed mid-transaction after SQLite spilled changed pages into the file: a hot journal remains.
    code = ("import os, signal, sqlite3, sys\n"
            "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "conn.execute('PRAGMA cache_size = 10')\n"
            "conn.execute('BEGIN IMMEDIATE')\n"
            "conn.execute('UPDATE head SET version = 99')\n"
            "conn.execute('DELETE FROM meta')\n"
            "conn.execute('DELETE FROM exemplars')\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code, str(pkg / CATALOG)])
    assert (pkg / f"{CATALOG}-journal").exists()
    version = open_package(pkg)  # a reader: rolls the half-done transaction back
    assert version.manifest.version == 1 and len(version.exemplars()[0]) == version.manifest.budget.exemplars
    assert not (pkg / f"{CATALOG}-journal").exists()


# -- 6 and 9: OS errors and backends as user errors ------------------------------------------------


def test_export_to_a_file_is_a_user_error(base: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("mine")
    assert_one_line_refusal(invoke("export", base["root"] / "run", "--out", target), 2, str(target))
    assert_one_line_refusal(invoke("export", base["root"] / "run", "--out", target / "pkg"), 2, str(target))
    assert target.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_train_to_a_file_is_a_user_error(tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("mine")
    result = invoke("train", "--out", target, "--backbone", "resnet8", "--epochs", "1", "--init-epochs", "1",
                    "--device", "cpu")
    assert_one_line_refusal(result, 2, str(target))
    assert target.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.slow
def test_export_into_a_read_only_directory_is_a_user_error(base: dict[str, Path], tmp_path: Path,
                                                           readonly_ok: None) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    result = readonly_cli(parent, "export", base["root"] / "run", "--out", parent / "pkg")
    assert_one_line_refusal(result, 2, str(parent))
    assert list(parent.iterdir()) == []  # no temp directory left behind


def test_an_unknown_backend_is_a_user_error_in_the_api_and_the_cli(base: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown backend 'nope'"):
        load(base["pkg"], backend="nope")
    with pytest.raises(InputError, match="has no option"):
        load(base["pkg"], backend="ort-cpu", fp16=True)
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 32, 32, 3), np.uint8))
    assert_one_line_refusal(invoke("predict", base["pkg"], tmp_path / "x.npz", "--backend", "nope"), 2, "unknown backend")


def test_update_warns_about_class_folder_images_it_resizes(base: dict[str, Path], tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    from PIL import Image

    from memo_edge.device.update import load_new_classes

    for name in ("a", "b"):
        (tmp_path / "new" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(tmp_path / "new" / name / f"{i}.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "new" / "a" / "native.png")
    with caplog.at_level("WARNING", logger="memo_edge"):
        source, _ = load_new_classes(str(tmp_path / "new"), open_package(base["pkg"]).manifest)
    assert source.take(np.arange(1)).shape == (1, 32, 32, 3)
    assert "6 of 7 images are not 32x32" in caplog.text and "16x16 (6)" in caplog.text
