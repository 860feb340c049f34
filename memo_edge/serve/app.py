"""The Starlette app: /predict, /update, /jobs/{id}, /rollback, /health, /ready, /info, /metrics,
/openapi.json (docs/serve.md).

Every error body is ``{"error": "<one line>", "code": "<code>"}``, its status the code's
(``memo_edge.errors.CODES``): a client's mistake is a 4xx; anything else a 500 or 503 with one line
(the traceback goes to the log, never to the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from memo_edge.errors import MemoEdgeError, as_error, http_status
from memo_edge.options import OptionSpec, UpdateOptions
from memo_edge.runtime.versions import rollback
from memo_edge.serve.batcher import Batcher
from memo_edge.serve.inputs import ARRAY_TYPES, Limits, RequestError, decode_array, decode_images
from memo_edge.serve.jobs import Job, UpdateJobs
from memo_edge.serve.metrics import Metrics
from memo_edge.serve.openapi import openapi_schema
from memo_edge.serve.state import ServiceState
from memo_edge.serve.uploads import UPLOAD_TYPES, UploadLimits, remove_stale_uploads, unpack_upload, upload_dir

__all__ = ["create_app"]

log = logging.getLogger(__name__)
Handler = Callable[[Request], Awaitable[Response]]


def create_app(package: str | Path, *, backend: str = "auto", precision: str = "auto", max_batch: int = 32,
               max_delay_ms: float = 5.0, token: str | None = None, limits: Limits = Limits(),
               upload_limits: UploadLimits = UploadLimits(), check_interval_s: float = 0.2) -> Starlette:
    """Load (and verify) the package's current version now, and return the app that serves it."""
    metrics = Metrics()
    state = ServiceState(package, backend=backend, precision=precision, check_interval_s=check_interval_s,
                         on_swap=metrics.on_swap)
    state.load_now()
    metrics.version.set(state.version or 0)
    batcher = Batcher(state, max_batch=max_batch, max_delay_s=max_delay_ms / 1000, on_batch=metrics.on_batch)
    jobs = UpdateJobs(state.root, on_commit=state.swap_to, on_change=lambda job: metrics.on_job(job.outcome))
    expected = None if token is None else f"Bearer {token}".encode()
    closing = False

    def endpoint(name: str, handler: Handler, *, auth: bool = True) -> Handler:
        async def wrapped(request: Request) -> Response:
            start = time.perf_counter()
            try:
                if auth and expected is not None:
                    given = request.headers.get("authorization", "").encode()
                    if not hmac.compare_digest(given, expected):
                        raise RequestError("unauthorized",
                                           "missing or wrong bearer token (Authorization: Bearer <token>)")
                response = await handler(request)
            except HTTPException as exc:  # starlette's own (a malformed multipart form)
                response = await _http_error(request, exc)
            except Exception as exc:  # noqa: BLE001 - one line to the client, the traceback to the log
                error = as_error(exc, "serve")
                if error is None or error.code in ("internal", "failed"):
                    log.exception("%s failed", name)
                if error is None:
                    error = MemoEdgeError(f"internal error: {type(exc).__name__}: {exc}", code="internal")
                response = _error(error)
            metrics.requests.labels(name, str(response.status_code)).inc()
            metrics.latency.labels(name).observe(time.perf_counter() - start)
            return response

        return wrapped

    async def predict(request: Request) -> Response:
        top = _top(request)
        rt = state.runtime
        assert rt is not None
        spec = rt.package.manifest.input
        kind = _content_type(request)
        if kind not in (*ARRAY_TYPES, "multipart/form-data"):
            raise RequestError("unsupported_media", f"content-type {kind or 'missing'}: send an .npy/.npz array "
                               f"({', '.join(ARRAY_TYPES)}) or multipart/form-data with image files in field 'file'")
        with batcher.arriving():  # a batch being formed waits for this request
            if kind in ARRAY_TYPES:
                body = await _read_body(request, limits.max_body_bytes)
                images = await asyncio.to_thread(decode_array, body, spec, limits)
            else:
                files = await _read_files(request, limits)
                images = await asyncio.to_thread(decode_images, files, spec, limits)
        result = await batcher.submit(images)
        k = min(top, len(result.class_names))
        order = np.argsort(-result.scores, axis=1)[:, :k]
        return JSONResponse({"version": result.version, "predictions": [
            {"top": [{"label": int(j), "class": result.class_names[j], "score": round(float(row[j]), 6)} for j in best]}
            for row, best in zip(result.scores, order)]})

    async def do_rollback(request: Request) -> Response:
        # Refused as the package's errors say: a writer at work (busy), nothing to roll back to (conflict),
        # read-only storage, damage (corrupt): each a 409.
        version = await asyncio.to_thread(rollback, state.root)
        await state.swap_to(version)
        return JSONResponse({"version": version})

    async def update(request: Request) -> Response:
        with jobs.reservation():  # 409 at once while another update runs or uploads
            options = UpdateOptions.from_query(request.query_params, on_old=_old_parameter)
            kind = _content_type(request)
            if kind not in UPLOAD_TYPES:
                raise RequestError("unsupported_media", f"content-type {kind or 'missing'}: send a zip or tar of "
                                   f"class folders, or an npz with x, y and class_names ({', '.join(UPLOAD_TYPES)})")
            workdir = await asyncio.to_thread(upload_dir, state.root)
            try:
                await _save_body(request, workdir / "upload", upload_limits.max_upload_bytes)
                data = await asyncio.to_thread(unpack_upload, kind, workdir / "upload", workdir / "data", upload_limits)
                (workdir / "upload").unlink()
            except BaseException:
                shutil.rmtree(workdir, ignore_errors=True)
                raise
            job = await jobs.start(data, workdir, options)  # owns workdir from here on
        return JSONResponse(job.describe(), status_code=202, headers={"Location": f"/jobs/{job.id}"})

    async def job_status(request: Request) -> Response:
        job: Job | None = jobs.get(request.path_params["job_id"])
        if job is None:
            raise RequestError("not_found", f"no job {request.path_params['job_id']!r} (the service keeps the last 16)")
        return JSONResponse(job.describe())

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def ready(request: Request) -> Response:
        await state.maybe_refresh()
        if state.runtime is None or closing:
            return JSONResponse({"status": "not ready"}, status_code=503)
        return JSONResponse({"status": "ready", "version": state.version})

    async def info(request: Request) -> Response:
        await state.maybe_refresh()
        return JSONResponse(state.describe())

    schema = openapi_schema(limits, upload_limits, token=token is not None)

    async def openapi(request: Request) -> Response:
        return JSONResponse(schema)

    async def metrics_text(request: Request) -> Response:
        return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal closing
        # Uploads of a service that was killed (SIGKILL, a power cut) before it could remove them.
        await asyncio.to_thread(remove_stale_uploads, state.root)
        yield
        closing = True
        await jobs.close()
        await batcher.close()

    routes = [Route("/predict", endpoint("predict", predict), methods=["POST"]),
              Route("/update", endpoint("update", update), methods=["POST"]),
              Route("/jobs/{job_id}", endpoint("jobs", job_status), methods=["GET"]),
              Route("/rollback", endpoint("rollback", do_rollback), methods=["POST"]),
              Route("/health", endpoint("health", health, auth=False), methods=["GET"]),
              Route("/ready", endpoint("ready", ready), methods=["GET"]),
              Route("/info", endpoint("info", info), methods=["GET"]),
              Route("/metrics", endpoint("metrics", metrics_text), methods=["GET"]),
              Route("/openapi.json", endpoint("openapi", openapi), methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    app.state.service, app.state.batcher, app.state.metrics, app.state.jobs = state, batcher, metrics, jobs
    return app


def _error(error: MemoEdgeError) -> JSONResponse:
    """Every error body of the service: one line and the error's stable code, at the code's status."""
    status = http_status(error.code)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    message = str(error).splitlines()[0] if str(error) else error.code
    return JSONResponse({"error": message, "code": error.code}, status_code=status, headers=headers)


_FRAMEWORK_CODES = {404: "not_found", 405: "bad_method", 413: "too_large", 415: "unsupported_media"}


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (an unknown path, a method a route does not take, a malformed form) in
    the service's error body."""
    assert isinstance(exc, HTTPException)
    code = _FRAMEWORK_CODES.get(exc.status_code, "bad_input" if exc.status_code < 500 else "internal")
    response = _error(MemoEdgeError(str(exc.detail), code=code))
    response.headers.update(exc.headers or {})
    return response


def _old_parameter(old: str, new: str) -> None:
    log.warning("POST /update: the query parameter %s is deprecated; use %s", old, new)


_TOP = OptionSpec("top", int, 1, "classes per image", least=1)


def _top(request: Request) -> int:
    return _TOP.parse(request.query_params.get("top", "1"))  # an InputError: bad_input, 400


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _bounded_body(request: Request, limit: int) -> AsyncIterator[bytes]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise RequestError("too_large", f"the body has {int(declared):,} bytes; at most {limit:,}")
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError("too_large", f"the body has more than {limit:,} bytes; at most {limit:,}")
        yield chunk


async def _read_body(request: Request, limit: int) -> bytes:
    return b"".join([chunk async for chunk in _bounded_body(request, limit)])


async def _save_body(request: Request, path: Path, limit: int) -> None:
    """Stream the body to ``path``, writing in a thread (an upload may be large; predictions go on)."""
    with open(path, "xb") as out:
        pending: list[bytes] = []
        async for chunk in _bounded_body(request, limit):
            pending.append(chunk)
            if sum(map(len, pending)) >= 1 << 20:
                await asyncio.to_thread(out.write, b"".join(pending))
                pending.clear()
        await asyncio.to_thread(out.write, b"".join(pending))


async def _read_files(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
    body = await _read_body(request, limits.max_body_bytes)
    sent = False

    async def replay() -> dict[str, Any]:  # the form parser reads the body already read (and bounded)
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    form_request = Request(request.scope, replay)
    try:
        form = await form_request.form(max_files=limits.max_images + 1, max_fields=limits.max_images + 16)
    except HTTPException as exc:
        if "too many" in str(exc.detail).lower():
            raise RequestError("too_large", f"more than {limits.max_images} images in one request; at most "
                               f"{limits.max_images}") from None
        raise RequestError("bad_input", f"multipart form: {exc.detail}") from None
    try:
        uploads = form.getlist("file")
        if any(isinstance(u, str) for u in uploads):
            raise RequestError("bad_input", "field 'file' must hold image files, not text")
        if len(uploads) > limits.max_images:
            raise RequestError("too_large", f"{len(uploads)} images in one request; at most {limits.max_images}")
        return [(u.filename or f"file {i}", await u.read()) for i, u in enumerate(uploads)]
    finally:
        await form.close()
