"""memo-edge serve's update jobs: uploads unpacked safely, one job at a time in a child process, hot swap
of what it commits, and a crash of training that never reaches the predictions. Real processes for
the jobs (the child is ``memo-edge update``); every test copies the session's package first."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import warnings
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

with warnings.catch_warnings():  # starlette >= 1.x suggests httpx2 for its TestClient; httpx still works
    warnings.filterwarnings("ignore", message=".*install `httpx2`")
    from starlette.testclient import TestClient

from conftest import UPDATE, invoke, npy, npz, png, served, tree_digest
from memo_edge.errors import InputError, http_status
from memo_edge.runtime.check import check_package
from memo_edge.runtime.lock import writer_lock
from memo_edge.runtime.package import open_package
from memo_edge.runtime.versions import list_versions
from memo_edge.serve.app import create_app
from memo_edge.serve.inputs import RequestError
from memo_edge.serve.uploads import UploadLimits, remove_stale_uploads, unpack_upload, upload_dir

NPY = {"content-type": "application/x-npy"}
QUICK = "epochs=2&batch_size=32"  # a short update of the tiny package


def new_classes(npz_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The train split and class names of a conftest npz dataset (the base fixture's task4/task5)."""
    with np.load(npz_dir / "train-00.npz") as data:
        x, y = data["x"], data["y"]
    return x, y, json.loads((npz_dir / "meta.json").read_text())["class_names"]


def class_folder_zip(x: np.ndarray, y: np.ndarray, names: list[str], top: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, (image, label) in enumerate(zip(x, y)):
            z.writestr(f"{top}{names[label]}/{k:04d}.png", png(image))
    return buf.getvalue()


def npz_upload(x: np.ndarray, y: np.ndarray, names: list[str]) -> bytes:
    return npz(x=x, y=y, class_names=np.array(names))


def wait_for_job(get, job_id: str, *, until=lambda job: job["state"] in ("succeeded", "failed"),
                 limit: float = 240) -> dict:
    """Poll GET /jobs/{id} (over HTTP there is no event to await) until ``until`` holds."""
    deadline = time.monotonic() + limit
    while True:
        job = get(f"/jobs/{job_id}").json()
        if until(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job}"
        time.sleep(0.1)


@pytest.fixture()
def pkg(base: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(base["pkg"], tmp_path / "pkg"))


# --- uploads, without a service ---------------------------------------------------------------------


def _zip(members: dict[str, bytes], link: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = 0o120777 << 16  # a symbolic link, as `zip --symlinks` stores it
            z.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _tar(add) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        add(t)
    return buf.getvalue()


def _tar_member(t: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", target: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, len(data), target
    t.addfile(info, io.BytesIO(data) if data else None)


@pytest.mark.parametrize("kind,body,message", [
    ("application/zip", _zip({"a/1.png": b"x", "../evil.png": b"x"}), "'..' in a path"),
    ("application/zip", _zip({"/etc/evil.png": b"x"}), "absolute paths"),
    ("application/zip", _zip({"a/1.png": b"x"}, link="a/link.png"), "links are refused"),
    ("application/gzip", _tar(lambda t: _tar_member(t, "a/x/../../evil", data=b"x")), "'..' in a path"),
    ("application/gzip", _tar(lambda t: _tar_member(t, "a/link", tarfile.SYMTYPE, target="/etc/passwd")),
     "links are refused"),
    ("application/gzip", _tar(lambda t: _tar_member(t, "a/hard", tarfile.LNKTYPE, target="a/1.png")),
     "links are refused"),
    ("application/gzip", _tar(lambda t: _tar_member(t, "a/fifo", tarfile.FIFOTYPE)), "only files and folders"),
    ("application/zip", b"PK\x03\x04 not really", "not a readable zip"),
    ("application/zip", _zip({"1.png": b"x"}), "no class folders"),
    ("application/zip", _zip({"a/big.bin": bytes(2_000_000)}), "unpacks to more than"),  # compresses to ~2 KB
    ("application/zip", _zip({f"a/{k}.png": b"x" for k in range(11)}), "11 members; at most 10"),
    ("application/x-npz", npz_upload(np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 2]), ["a", "b"]),
     "expected 0..1"),
    ("application/x-npz", npz_upload(np.zeros((2, 8, 8), np.uint8), np.array([0, 1]), ["a", "b"]), "uint8 [N,H,W,C]"),
    ("text/plain", b"x", "content-type text/plain"),
])
def test_unsafe_or_unreadable_uploads_are_refused_by_name(tmp_path: Path, kind: str, body: bytes, message: str) -> None:
    (tmp_path / "upload").write_bytes(body)
    with pytest.raises(RequestError, match=re.escape(message)) as caught:
        unpack_upload(kind, tmp_path / "upload", tmp_path / "data",
                      UploadLimits(max_unpacked_bytes=1_000_000, max_members=10))
    assert 400 <= caught.value.status < 500
    assert not (tmp_path.parent / "evil.png").exists() and not Path("/etc/evil.png").exists()


def test_class_folders_unpack_with_or_without_a_top_folder(tmp_path: Path) -> None:
    members = {"cats/1.png": b"1", "cats/2.png": b"2", "dogs/1.png": b"3"}
    for k, (top, extra) in enumerate([("", {}), ("new/", {"__MACOSX/new/._cats": b"junk"})]):
        (tmp_path / f"u{k}").write_bytes(_zip({top + n: d for n, d in members.items()} | extra))
        root = Path(unpack_upload("application/zip", tmp_path / f"u{k}", tmp_path / f"d{k}", UploadLimits()))
        assert sorted(p.name for p in root.iterdir()) == ["cats", "dogs"]
        assert (root / "cats" / "2.png").read_bytes() == b"2"


def test_a_killed_services_uploads_are_removed_when_the_next_one_starts(pkg: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    host = socket.gethostname()
    dead = pkg.parent / f".memo-edge-upload-{host}-{int(gone.stdout)}-abc"
    live = pkg.parent / f".memo-edge-upload-{host}-{os.getpid()}-def"
    elsewhere = pkg.parent / f".memo-edge-upload-other.host-{int(gone.stdout)}-ghi"  # its pid means nothing here
    older = pkg.parent / ".memo-edge-upload-x1y2"  # no host and pid in the name: not ours to judge
    for d in (dead, live, elsewhere, older):
        (d / "data").mkdir(parents=True)
        (d / "data" / "x.npy").write_bytes(b"x")
    with TestClient(create_app(pkg, backend="ort-cpu")) as client:
        assert client.get("/ready").status_code == 200
    assert not dead.exists() and live.exists() and elsewhere.exists() and older.exists()
    made = upload_dir(pkg)  # what the service makes for an upload: its host and pid in the name
    assert made.parent == pkg.resolve().parent and made.name.startswith(f".memo-edge-upload-{host}-{os.getpid()}-")
    assert remove_stale_uploads(pkg) == []


# --- jobs in the service ----------------------------------------------------------------------------


@pytest.mark.slow
def test_refused_updates_are_4xx_json_and_change_nothing(pkg: Path, base: dict[str, Path]) -> None:
    x, y, names = new_classes(base["task4"])
    before = tree_digest(pkg.parent)  # the package and the upload directories beside it
    rng = np.random.default_rng(0)
    crowd = [f"c{k}" for k in range(400)]  # one exemplar each would need more bytes than the budget has
    cases = [  # (status, what the error names, body, content type, query)
        (400, "'..' in a path", _zip({"a/1.png": png(x[0]), "../b/1.png": png(x[1])}), "application/zip", QUICK),
        (400, "class names already in the package", class_folder_zip(x, y, ["0", "1"]), "application/zip", QUICK),
        (400, "the budget cannot fit another task", npz_upload(rng.integers(0, 256, (400, 32, 32, 3), np.uint8),
                                                              np.arange(400), crowd), "application/x-npz", QUICK),
        (400, "images are (28, 28, 3)", npz_upload(x[:, :28, :28], y, names), "application/x-npz", QUICK),
        (400, "epochs='0'", class_folder_zip(x, y, names), "application/zip", "epochs=0"),
        (400, "unknown parameter 'lr'", class_folder_zip(x, y, names), "application/zip", "lr=1"),
        (400, "int8='maybe': expected true or false", class_folder_zip(x, y, names), "application/zip", "int8=maybe"),
        (400, "--train-precision fp16 needs a CUDA GPU", class_folder_zip(x, y, names), "application/zip",
         "precision=fp16"),  # refused by `update` itself, before any training
        (415, "content-type image/png", png(x[0]), "image/png", QUICK),
    ]
    with TestClient(create_app(pkg, backend="ort-cpu")) as client:
        for status, message, body, kind, query in cases:
            r = client.post(f"/update?{query}", content=body, headers={"content-type": kind})
            assert r.status_code == status and message in r.json()["error"], (message, r.status_code, r.text)
            assert http_status(r.json()["code"]) == status, r.text  # the stable code, the status from it
            assert len(r.json()["error"].splitlines()) == 1 and "Traceback" not in r.text
            assert ".memo-edge-upload" not in r.text  # the upload's temporary path means nothing to the client
        with writer_lock(pkg, "rollback"):  # another writer at work: 409, naming it
            r = client.post(f"/update?{QUICK}", content=class_folder_zip(x, y, names),
                            headers={"content-type": "application/zip"})
        assert r.status_code == 409 and "being changed by pid" in r.json()["error"]
        metrics = client.get("/metrics").text
        assert 'memo_edge_update_jobs_total{outcome="refused"} 5.0' in metrics  # those refused by `update`
        assert client.get("/jobs/nope").status_code == 404
    assert tree_digest(pkg.parent) == before


@pytest.mark.slow
def test_clients_predict_without_a_failure_while_a_job_commits_and_a_rollback_follows(
        pkg: Path, base: dict[str, Path]) -> None:
    x, y, names = new_classes(base["task4"])
    probe = npy(x[:2])
    answers: list[tuple[float, float, int]] = []  # (sent, answered, version)
    failures: list[str] = []
    stop = threading.Event()

    def client(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            for _ in range(5000):  # bounded, whatever happens
                if stop.is_set():
                    return
                sent = time.monotonic()
                try:
                    r = http.post("/predict", content=probe, headers=NPY)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                else:
                    answers.append((sent, time.monotonic(), r.json()["version"]))
                time.sleep(0.05)  # a paced camera, not a flood: the niced training child gets the rest of the CPU

    with served(pkg) as server, httpx.Client(base_url=server.url, timeout=120) as http:
        threads = [threading.Thread(target=client, args=(server.url,)) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            r = http.post(f"/update?{QUICK}", content=class_folder_zip(x, y, names),
                          headers={"content-type": "application/zip"})
            assert r.status_code == 202, r.text
            job = r.json()
            assert job["state"] == "training" and job["classes"] == names and r.headers["location"] == f"/jobs/{job['id']}"
            again = http.post(f"/update?{QUICK}", content=class_folder_zip(x, y, names),
                              headers={"content-type": "application/zip"})
            assert again.status_code == 409 and job["id"] in again.json()["error"]
            done = wait_for_job(http.get, job["id"])
            committed = time.monotonic()
            assert done["state"] == "succeeded" and done["version"] == 2 and done["parent"] == 1, done
            assert done["progress"]["epoch"] == 2 == done["progress"]["epochs"]
            while not any(sent > committed for sent, _, _ in answers):  # answers that began after the commit
                assert not failures and all(t.is_alive() for t in threads)
                time.sleep(0.05)
            rolled = time.monotonic()
            r = http.post("/rollback")  # answered once version 1 serves again
            assert r.status_code == 200 and r.json() == {"version": 1}, r.text
            after_rollback = time.monotonic()
            while sum(sent > after_rollback for sent, _, _ in answers) < 8:
                assert not failures and all(t.is_alive() for t in threads)
                time.sleep(0.05)
            info = http.get("/info").json()
            metrics = http.get("/metrics").text
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
    assert failures == []
    assert {v for _, _, v in answers} == {1, 2}
    assert all(v == 2 for sent, answered, v in answers if committed < sent and answered < rolled)
    assert all(v == 1 for sent, _, v in answers if sent > after_rollback)
    assert info["version"] == 1 and info["tasks"] == 3
    assert 'memo_edge_update_jobs_total{outcome="succeeded"} 1.0' in metrics
    assert not list(pkg.parent.glob(".memo-edge-upload-*"))  # the upload was removed
    assert sorted(v.version for v in list_versions(pkg)) == [1, 2]


@pytest.mark.slow
def test_a_killed_training_child_fails_its_job_and_the_service_carries_on(pkg: Path, base: dict[str, Path]) -> None:
    x, y, names = new_classes(base["task4"])
    with served(pkg) as server, httpx.Client(base_url=server.url, timeout=120) as http:
        r = http.post("/update?epochs=500&batch_size=32", content=npz_upload(x, y, names),
                      headers={"content-type": "application/x-npz"})
        assert r.status_code == 202, r.text
        job = wait_for_job(http.get, r.json()["id"], until=lambda job: job["progress"]["epoch"] >= 1)
        # A writer beside the job's child is refused at once, naming it.
        beside = invoke("update", pkg, "--data", f"npz:{base['task5']}", *UPDATE)
        assert beside.exit_code == 2 and f"being changed by pid {job['pid']}" in beside.output
        os.kill(job["pid"], signal.SIGKILL)
        failed = wait_for_job(http.get, job["id"])
        assert failed["state"] == "failed" and failed["error"] == "the update process was killed by SIGKILL"
        r = http.post("/predict", content=npy(x[:3]), headers=NPY)
        assert r.status_code == 200 and r.json()["version"] == 1
        assert check_package(pkg).ok
        assert not list(pkg.parent.glob(".memo-edge-upload-*"))
        r = http.post(f"/update?{QUICK}&precision=bf16", content=npz_upload(x, y, names),
                      headers={"content-type": "application/x-npz"})
        assert r.status_code == 202, r.text
        done = wait_for_job(http.get, r.json()["id"])
        assert done["state"] == "succeeded" and done["version"] == 2, done  # the killed job kept nothing
        assert http.post("/predict", content=npy(x[:3]), headers=NPY).json()["version"] == 2
    assert check_package(pkg).ok
    assert open_package(pkg).manifest.source["update"]["precision"] == "bf16"


def test_update_options_map_to_the_update_command() -> None:
    from memo_edge.options import UpdateOptions

    assert UpdateOptions.from_query({}).argv() == ["--epochs", "30", "--batch-size", "128", "--schedule", "cosine",
                                                   "--seed", "1993", "--freeze-base", "--train-precision", "fp32",
                                                   "--codec-mix", "0.0"]
    options = UpdateOptions.from_query({"epochs": "3", "train_base": "true", "int8": "false", "schedule": "step",
                                        "train_precision": "bf16", "codec_mix": "0.25"})
    assert options.argv() == ["--epochs", "3", "--batch-size", "128", "--schedule", "step", "--seed", "1993",
                              "--train-base", "--no-int8", "--train-precision", "bf16", "--codec-mix", "0.25"]
    for bad in ("1.5", "-0.1", "nan", "half"):
        with pytest.raises(InputError, match="codec_mix"):
            UpdateOptions.from_query({"codec_mix": bad})
    for bad in ("\u00b2", "\u0663", "+3", " 3", "3.0", "-1", "9" * 5000):  # ASCII digits only: "²" and "٣" pass str.isdigit()
        with pytest.raises(InputError, match="epochs=.*expected a whole number >= 1"):
            UpdateOptions.from_query({"epochs": bad})
    old = []  # the old name of train_precision still works, and is heard as old
    assert UpdateOptions.from_query({"precision": "bf16"}, on_old=lambda *names: old.append(names)).train_precision == "bf16"
    assert old == [("precision", "train_precision")]
    with pytest.raises(InputError, match="once"):
        UpdateOptions.from_query({"precision": "bf16", "train_precision": "fp32"})
    with pytest.raises(InputError, match="device"):  # the service's own choice, not a client's
        UpdateOptions.from_query({"device": "cpu"})


def test_a_failed_update_says_its_code_in_its_json_event(pkg: Path, base: dict[str, Path]) -> None:
    """The child's failed event carries the stable code the service turns into a status."""
    with writer_lock(pkg, "rollback"):
        busy = invoke("update", pkg, "--data", f"npz:{base['task5']}", "--json", *UPDATE)
    clash = invoke("update", pkg, "--data", f"npz:{base['root'] / 'first6'}", "--json", *UPDATE)  # classes it has
    for result, code in ((busy, "busy"), (clash, "bad_input")):
        assert result.exit_code == 2, result.output
        event = json.loads(result.stdout.splitlines()[-1])
        assert event["event"] == "failed" and event["code"] == code, event
