"""The Starlette app: /predict, /rollback, /health, /ready, /info, /metrics (docs/serve.md).

Every error a client can cause is a 4xx with ``{"error": "<one line>"}``; anything else is a 500 with
one line (the traceback goes to the log, never to the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
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

from memo_edge.errors import MemoEdgeError
from memo_edge.runtime.versions import rollback
from memo_edge.serve.batcher import Batcher
from memo_edge.serve.inputs import ARRAY_TYPES, Limits, RequestError, decode_array, decode_images
from memo_edge.serve.metrics import Metrics
from memo_edge.serve.state import ServiceState

__all__ = ["create_app"]

log = logging.getLogger(__name__)
Handler = Callable[[Request], Awaitable[Response]]


def create_app(package: str | Path, *, backend: str = "auto", precision: str = "auto", max_batch: int = 32,
               max_delay_ms: float = 5.0, token: str | None = None, limits: Limits = Limits(),
               check_interval_s: float = 0.2) -> Starlette:
    """Load (and verify) the package's current version now, and return the app that serves it."""
    metrics = Metrics()
    state = ServiceState(package, backend=backend, precision=precision, check_interval_s=check_interval_s,
                         on_swap=metrics.on_swap)
    state.load_now()
    metrics.version.set(state.version or 0)
    batcher = Batcher(state, max_batch=max_batch, max_delay_s=max_delay_ms / 1000, on_batch=metrics.on_batch)
    expected = None if token is None else f"Bearer {token}".encode()
    closing = False

    def endpoint(name: str, handler: Handler, *, auth: bool = True) -> Handler:
        async def wrapped(request: Request) -> Response:
            start = time.perf_counter()
            try:
                if auth and expected is not None:
                    given = request.headers.get("authorization", "").encode()
                    if not hmac.compare_digest(given, expected):
                        raise RequestError(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
                response = await handler(request)
            except RequestError as exc:
                response = _error(exc.status, str(exc))
            except HTTPException as exc:  # starlette's own (a malformed multipart form)
                response = _error(exc.status_code, str(exc.detail))
            except Exception as exc:  # noqa: BLE001 - one line to the client, the traceback to the log
                log.exception("%s failed", name)
                response = _error(500, f"internal error: {type(exc).__name__}: {exc}".splitlines()[0])
            metrics.requests.labels(name, str(response.status_code)).inc()
            metrics.latency.labels(name).observe(time.perf_counter() - start)
            return response

        return wrapped

    async def predict(request: Request) -> Response:
        top = _top(request)
        rt = state.runtime
        assert rt is not None
        spec = rt.package.manifest.input
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind in ARRAY_TYPES:
            body = await _read_body(request, limits.max_body_bytes)
            images = await asyncio.to_thread(decode_array, body, spec, limits)
        elif kind == "multipart/form-data":
            files = await _read_files(request, limits)
            images = await asyncio.to_thread(decode_images, files, spec, limits)
        else:
            raise RequestError(415, f"content-type {kind or 'missing'}: send an .npy/.npz array ("
                               f"{', '.join(ARRAY_TYPES)}) or multipart/form-data with image files in field 'file'")
        result = await batcher.submit(images)
        k = min(top, len(result.class_names))
        order = np.argsort(-result.scores, axis=1)[:, :k]
        return JSONResponse({"version": result.version, "predictions": [
            {"top": [{"label": int(j), "class": result.class_names[j], "score": round(float(row[j]), 6)} for j in best]}
            for row, best in zip(result.scores, order)]})

    async def do_rollback(request: Request) -> Response:
        try:
            version = await asyncio.to_thread(rollback, state.root)
        except MemoEdgeError as exc:  # a writer at work, nothing to roll back to, read-only storage, damage
            raise RequestError(409, str(exc)) from None
        await state.swap_to(version)
        return JSONResponse({"version": version})

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

    async def metrics_text(request: Request) -> Response:
        return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal closing
        yield
        closing = True
        await batcher.close()

    routes = [Route("/predict", endpoint("predict", predict), methods=["POST"]),
              Route("/rollback", endpoint("rollback", do_rollback), methods=["POST"]),
              Route("/health", endpoint("health", health, auth=False), methods=["GET"]),
              Route("/ready", endpoint("ready", ready), methods=["GET"]),
              Route("/info", endpoint("info", info), methods=["GET"]),
              Route("/metrics", endpoint("metrics", metrics_text), methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.service, app.state.batcher, app.state.metrics = state, batcher, metrics
    return app


def _error(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _top(request: Request) -> int:
    raw = request.query_params.get("top", "1")
    try:
        top = int(raw)
    except ValueError:
        top = 0
    if top < 1:
        raise RequestError(400, f"top={raw!r}: expected a whole number >= 1")
    return top


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body has {int(declared):,} bytes; at most {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body has more than {limit:,} bytes; at most {limit:,}")
        chunks.append(chunk)
    return b"".join(chunks)


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
            raise RequestError(413, f"more than {limits.max_images} images in one request; at most "
                               f"{limits.max_images}") from None
        raise RequestError(400, f"multipart form: {exc.detail}") from None
    try:
        uploads = form.getlist("file")
        if any(isinstance(u, str) for u in uploads):
            raise RequestError(400, "field 'file' must hold image files, not text")
        if len(uploads) > limits.max_images:
            raise RequestError(413, f"{len(uploads)} images in one request; at most {limits.max_images}")
        return [(u.filename or f"file {i}", await u.read()) for i, u in enumerate(uploads)]
    finally:
        await form.close()
