"""memo-edge serve: the HTTP API in process (Starlette's TestClient, httpx's ASGI transport) and one real
server process. Every test copies the session's package before anything that writes."""

from __future__ import annotations

import asyncio
import io
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest

with warnings.catch_warnings():  # starlette >= 1.x suggests httpx2 for its TestClient; httpx still works
    warnings.filterwarnings("ignore", message=".*install `httpx2`")
    from starlette.testclient import TestClient

from conftest import free_port, npy, npz, png, served, tree_digest
from memo_edge.errors import http_status
from memo_edge.runtime.lock import writer_lock
from memo_edge.runtime.package import open_package
from memo_edge.runtime.predict import load, read_inputs
from memo_edge.runtime.writer import PackageWriter
from memo_edge.serve.app import create_app
from memo_edge.serve.inputs import Limits

RNG_SEED = 7


def images(n: int, shape: tuple[int, ...] = (32, 32, 3), seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def post_array(client: TestClient, body: bytes, *, top: int = 1,
               headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post(f"/predict?top={top}", content=body,
                       headers={"content-type": "application/octet-stream", **(headers or {})})


def assert_matches(answer: dict, labels: np.ndarray, scores: np.ndarray, names: tuple[str, ...], top: int) -> None:
    assert len(answer["predictions"]) == len(labels)
    for pred, label, row in zip(answer["predictions"], labels, scores):
        assert pred["top"][0]["label"] == int(label)
        assert len(pred["top"]) == top
        expected = np.argsort(-row)[:top]
        for entry, k in zip(pred["top"], expected):
            assert entry["label"] == int(k) and entry["class"] == names[k]
            assert entry["score"] == pytest.approx(float(row[k]), abs=1e-5)


@pytest.fixture()
def pkg(base: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(base["pkg"], tmp_path / "pkg"))


def test_predict_answers_equal_the_python_api_with_the_version(pkg: Path) -> None:
    rt = load(pkg, backend="ort-cpu")
    x = images(5)
    labels, scores = rt.predict(x)
    with TestClient(create_app(pkg, backend="ort-cpu")) as client:
        for body in (npy(x), npz(x=x)):
            r = post_array(client, body, top=3)
            assert r.status_code == 200, r.text
            assert r.json()["version"] == 1
            assert_matches(r.json(), labels, scores, rt.class_names, top=3)
        r = post_array(client, npy(x), top=99)  # more than the classes: all of them
        assert len(r.json()["predictions"][0]["top"]) == len(rt.class_names)


def test_multipart_image_files_are_read_like_memo_edge_predict(pkg: Path, tmp_path: Path) -> None:
    rt = load(pkg, backend="ort-cpu")
    files = []
    for k, shape in enumerate([(32, 32, 3), (40, 48, 3), (32, 32)]):  # other sizes are resized; gray -> RGB
        path = tmp_path / f"img{k}.png"
        path.write_bytes(png(images(1, shape, seed=k)[0]))
        files.append(path)
    (_, x), = read_inputs(files, rt.package.manifest.input, 64)
    labels, scores = rt.predict(x)
    with TestClient(create_app(pkg, backend="ort-cpu")) as client:
        r = client.post("/predict?top=2", files=[("file", (p.name, p.read_bytes(), "image/png")) for p in files])
    assert r.status_code == 200, r.text
    assert_matches(r.json(), labels, scores, rt.class_names, top=2)


def test_bad_requests_are_4xx_json_lines_and_change_nothing(pkg: Path) -> None:
    before = tree_digest(pkg)
    gray = images(2, (32, 32, 1))
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)  # never unpickled by the service
    pickled = buf.getvalue()
    limits = Limits(max_body_bytes=64 * 1024, max_images=4)
    cases = [  # (status, what the error names, request)
        (415, "content-type text/plain", dict(content=b"x", headers={"content-type": "text/plain"})),
        (400, "not a .npy or .npz", dict(content=b"garbage", headers={"content-type": "application/x-npy"})),
        (400, "expected uint8 [N,32,32,3]", dict(content=npy(images(2, (28, 28, 3))),
                                                  headers={"content-type": "application/x-npy"})),
        (400, "got uint8 [2, 32, 32, 1]", dict(content=npy(gray), headers={"content-type": "application/x-npy"})),
        (400, "send the images as 'x'", dict(content=npz(images=images(1)),
                                            headers={"content-type": "application/octet-stream"})),
        (400, "not a .npy or .npz", dict(content=b"\x93NUMPY", headers={"content-type": "application/octet-stream"})),
        (400, "allow_pickle=False", dict(content=pickled, headers={"content-type": "application/octet-stream"})),
        (400, "no images", dict(content=npy(images(0)), headers={"content-type": "application/x-npy"})),
        (413, "at most 4", dict(content=npy(images(5)), headers={"content-type": "application/x-npy"})),
        (413, "at most 65,536", dict(content=npy(images(8, (64, 64, 3))),
                                     headers={"content-type": "application/x-npy"})),
        (400, "cannot read image", dict(files=[("file", ("bad.png", b"\x89PNG not really", "image/png"))])),
        (400, "no image files", dict(files=[("other", ("a.png", png(images(1)[0]), "image/png"))])),
        (413, "at most 4", dict(files=[("file", (f"{i}.png", png(images(1)[0]), "image/png")) for i in range(6)])),
    ]
    with TestClient(create_app(pkg, backend="ort-cpu", limits=limits)) as client:
        for status, words, request in cases:
            r = client.post("/predict", **request)
            assert r.status_code == status, (words, r.text)
            error = r.json()["error"]
            assert words in error and "\n" not in error and "Traceback" not in error, error
        r = client.post("/predict?top=0", content=npy(images(1)), headers={"content-type": "application/x-npy"})
        assert r.status_code == 400 and "top" in r.json()["error"]
        assert client.get("/ready").status_code == 200  # still serving
    assert tree_digest(pkg) == before


def test_a_token_guards_every_endpoint_but_health(pkg: Path) -> None:
    with TestClient(create_app(pkg, backend="ort-cpu", token="s3cret")) as client:
        assert client.get("/health").json() == {"status": "alive"}
        for path in ("/ready", "/info", "/metrics"):
            assert client.get(path).status_code == 401
            assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert client.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        r = post_array(client, npy(images(1)))
        assert r.status_code == 401 and "bearer token" in r.json()["error"]
        assert post_array(client, npy(images(1)), headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.post("/rollback").status_code == 401


def test_ready_info_and_metrics(pkg: Path) -> None:
    manifest = open_package(pkg).manifest
    with TestClient(create_app(pkg, backend="ort-cpu")) as client:
        assert client.get("/ready").json() == {"status": "ready", "version": 1}
        info = client.get("/info").json()
        assert info["version"] == 1 and info["classes"] == list(manifest.class_names) and info["tasks"] == 3
        assert info["budget"]["total_bytes"] == manifest.budget.total_bytes
        assert 0 < info["budget"]["used_bytes"] <= info["budget"]["total_bytes"]
        assert info["backend"] == "ort-cpu" and info["precision"] in ("fp32", "int8")
        assert post_array(client, npy(images(3))).status_code == 200
        client.post("/predict", content=b"x", headers={"content-type": "text/plain"})
        text = client.get("/metrics").text
    assert "memo_edge_package_version 1.0" in text
    assert 'memo_edge_requests_total{endpoint="predict",status="200"} 1.0' in text
    assert 'memo_edge_requests_total{endpoint="predict",status="415"} 1.0' in text
    assert "memo_edge_batch_images_sum 3.0" in text
    assert 'memo_edge_request_seconds_count{endpoint="predict"} 2.0' in text


def _version_2(pkg: Path) -> None:
    """Version 2 with version 1's files and exemplars (cheap; the hot swap does not care what changed)."""
    with PackageWriter.append(pkg, "test") as writer:
        current = writer.current
        exemplars, tasks = current.exemplars()
        writer.commit(current.manifest, exemplars, tasks, keep=current.manifest.files)


def _wait_for_version(client: TestClient, version: int, x: bytes, limit: float = 20.0) -> dict:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:  # each predict lets the service check the head (interval 0)
        answer = post_array(client, x).json()
        if answer["version"] == version:
            return answer
        time.sleep(0.02)
    raise AssertionError(f"the service never answered with version {version}")


def test_a_new_version_is_swapped_in_and_rollback_swaps_back(pkg: Path) -> None:
    x = npy(images(2))
    with TestClient(create_app(pkg, backend="ort-cpu", check_interval_s=0.0)) as client:
        first = post_array(client, x).json()
        assert first["version"] == 1
        _version_2(pkg)
        second = _wait_for_version(client, 2, x)
        assert second["predictions"] == first["predictions"]  # the same weights
        assert client.get("/info").json()["version"] == 2
        with writer_lock(pkg, "update"):  # a writer at work: refused at once, naming it
            r = client.post("/rollback")
        assert r.status_code == 409 and "being changed by pid" in r.json()["error"]
        r = client.post("/rollback")
        assert r.status_code == 200 and r.json() == {"version": 1}
        assert post_array(client, x).json()["version"] == 1  # swapped before the answer
        r = client.post("/rollback")  # version 1 has no parent
        assert r.status_code == 409 and "nothing to roll back to" in r.json()["error"]
        assert "memo_edge_version_swaps_total 2.0" in client.get("/metrics").text


def test_a_version_that_fails_to_load_keeps_the_old_one_serving(pkg: Path, monkeypatch) -> None:
    x = npy(images(2))
    app = create_app(pkg, backend="ort-cpu", check_interval_s=0.0)
    state = app.state.service
    loads: list[int | None] = []

    def broken(version: int | None):
        loads.append(version)
        raise RuntimeError("engine build failed")

    with TestClient(app) as client:
        monkeypatch.setattr(state, "_load", broken)
        _version_2(pkg)
        deadline = time.monotonic() + 20
        while state.failed != 2 and time.monotonic() < deadline:
            assert post_array(client, x).json()["version"] == 1
            time.sleep(0.02)
        assert state.failed == 2 and loads == [2]
        assert post_array(client, x).json()["version"] == 1 and loads == [2]  # not retried
        assert client.get("/ready").status_code == 200


def test_concurrent_requests_are_coalesced_into_batches(pkg: Path) -> None:
    rt = load(pkg, backend="ort-cpu")
    x = images(24)
    labels, scores = rt.predict(x)
    app = create_app(pkg, backend="ort-cpu", max_batch=8, max_delay_ms=1000)  # full batches leave at once

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answers = await asyncio.gather(*(client.post("/predict?top=2", content=npy(x[i:i + 1]),
                                                         headers={"content-type": "application/x-npy"})
                                             for i in range(len(x))))
            answers.append(await client.get("/metrics"))
        await app.state.batcher.close()
        return answers

    *answers, metrics = asyncio.run(run())
    for i, r in enumerate(answers):
        assert r.status_code == 200, r.text
        assert_matches(r.json(), labels[i:i + 1], scores[i:i + 1], rt.class_names, top=2)
    lines = dict(line.rsplit(" ", 1) for line in metrics.text.splitlines() if line and not line.startswith("#"))
    batches = float(lines["memo_edge_batch_requests_count"])
    assert float(lines["memo_edge_batch_requests_sum"]) == 24.0
    assert 3 <= batches < 24 and float(lines['memo_edge_batch_requests_bucket{le="1.0"}']) < batches  # one held > 1
    assert float(lines['memo_edge_batch_images_bucket{le="8.0"}']) == batches  # never more than max_batch


def test_the_openapi_description_lists_every_route_with_its_methods(pkg: Path) -> None:
    app = create_app(pkg, backend="ort-cpu", token="secret")
    with TestClient(app) as client:
        assert client.get("/openapi.json").status_code == 401
        schema = client.get("/openapi.json", headers={"Authorization": "Bearer secret"}).json()
    assert schema["openapi"].startswith("3.1") and schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    routes = {route.path: {m.lower() for m in route.methods or ()} - {"head"} for route in app.routes}
    assert {path: set(ops) for path, ops in schema["paths"].items()} == routes
    for path, ops in schema["paths"].items():
        for op in ops.values():
            for response in op["responses"].values():
                for content in response.get("content", {}).values():
                    ref = content["schema"].get("$ref")
                    assert ref is None or ref.removeprefix("#/components/schemas/") in schema["components"]["schemas"]


def test_a_lone_request_does_not_wait_for_company(pkg: Path) -> None:
    app = create_app(pkg, backend="ort-cpu", max_batch=8, max_delay_ms=600_000)  # a wait would outlast the test

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answers = [await asyncio.wait_for(client.post("/predict", content=npy(images(1, seed=k)),
                                                          headers={"content-type": "application/x-npy"}), 60)
                       for k in range(3)]  # one after another: nobody else is ever on the way
        await app.state.batcher.close()
        return answers

    assert [r.status_code for r in asyncio.run(run())] == [200, 200, 200]


def test_a_real_server_process_answers_and_stops_cleanly_on_sigterm(pkg: Path) -> None:
    rt = load(pkg, backend="ort-cpu")
    labels, scores = rt.predict(images(2))
    with served(pkg, "--max-images", "2") as server:
        r = httpx.post(f"{server.url}/predict?top=3", content=npy(images(2)),
                       headers={"content-type": "application/x-npy"}, timeout=10)
        assert r.status_code == 200 and r.json()["version"] == 1
        assert_matches(r.json(), labels, scores, rt.class_names, top=3)  # the Python API's answers
        r = httpx.post(f"{server.url}/predict", content=npy(images(3)), headers={"content-type": "application/x-npy"},
                       timeout=10)  # the limit given on the command line
        assert r.status_code == 413 and "at most 2" in r.json()["error"]
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=30)
    out = server.log.read_text()
    # uvicorn shuts down gracefully (lifespan included), then re-raises the signal it caught, so the
    # process ends "killed by SIGTERM", which is what a supervisor (systemd) expects of a clean stop.
    assert server.proc.returncode in (0, -signal.SIGTERM), out
    assert "Application shutdown complete" in out and "Finished server process" in out, out
    assert "Traceback" not in out


def test_a_network_host_without_a_token_exits_2_at_once(pkg: Path, tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "memo_edge.cli", "serve", str(pkg), "--host", "0.0.0.0", "--port", str(port)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "--token-file" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with socket.socket() as s:  # nothing listens there
        assert s.connect_ex(("127.0.0.1", port)) != 0
    (tmp_path / "empty").write_text("\n")
    result = subprocess.run(cmd + ["--token-file", str(tmp_path / "empty")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "expected one token" in result.stderr


def test_a_missing_serve_extra_names_the_install_command(pkg: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from memo_edge.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn -> ModuleNotFoundError
    result = CliRunner().invoke(main, ["serve", str(pkg)])
    assert result.exit_code == 2
    assert "pip install 'memo-edge[serve]'" in result.output


def test_every_error_body_carries_its_stable_code(pkg: Path) -> None:
    """{"error": ..., "code": ...} with the code's status, Starlette's own 404 and 405 included."""
    auth = {"Authorization": "Bearer s3cret"}
    with TestClient(create_app(pkg, backend="ort-cpu", token="s3cret")) as client:
        cases = [
            (401, "unauthorized", client.get("/info")),
            (404, "not_found", client.get("/no-such-endpoint", headers=auth)),
            (405, "bad_method", client.get("/predict", headers=auth)),
            (404, "not_found", client.get("/jobs/nope", headers=auth)),
            (400, "bad_input", client.post("/predict?top=\u00b2", content=npy(images(1)),
                                           headers={**auth, "content-type": "application/x-npy"})),
            (415, "unsupported_media", client.post("/predict", content=b"x", headers={**auth, "content-type": "text/plain"})),
            (409, "conflict", client.post("/rollback", headers=auth)),  # version 1 has no parent
            (400, "bad_input", client.post("/update?lr=1", content=b"x", headers=auth)),
        ]
        for status, code, r in cases:
            assert (r.status_code, r.json()["code"]) == (status, code), r.text
            assert http_status(code) == status and len(r.json()["error"].splitlines()) == 1
