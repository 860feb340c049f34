"""``memo-edge serve``: refuse an unsafe binding, load the package, run uvicorn until SIGTERM/SIGINT."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from memo_edge.errors import InputError

__all__ = ["LOOPBACK", "read_token", "check_binding", "serve"]

log = logging.getLogger(__name__)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--token-file {path}: cannot read it ({exc})") from None
    if not token or any(c.isspace() for c in token):
        raise InputError(f"--token-file {path}: expected one token without spaces")
    return token


def check_binding(host: str, token: str | None) -> None:
    """Loopback only, unless every endpoint but /health asks for a token."""
    if host not in LOOPBACK and token is None:
        raise InputError(f"--host {host} would open the service to the network without authentication; "
                         "give --token-file FILE (clients send Authorization: Bearer <token>), or bind 127.0.0.1")


def serve(package: Path, *, host: str, port: int, backend: str, precision: str, max_batch: int,
          max_delay_ms: float, token_file: Path | None, max_body_mb: float = 64, max_images: int = 256,
          max_image_pixels: int = 40_000_000, max_upload_mb: float = 512) -> None:
    token = read_token(token_file)
    check_binding(host, token)
    import uvicorn  # the [serve] extra, imported once the options are known to be sound

    if importlib.util.find_spec("python_multipart") is None:  # starlette imports it on the first upload only
        raise ModuleNotFoundError("No module named 'python_multipart'", name="python_multipart")
    from memo_edge.serve.app import create_app
    from memo_edge.serve.inputs import Limits
    from memo_edge.serve.uploads import UploadLimits

    upload = int(max_upload_mb * 2**20)
    app = create_app(package, backend=backend, precision=precision, max_batch=max_batch,
                     max_delay_ms=max_delay_ms, token=token,
                     limits=Limits(int(max_body_mb * 2**20), max_images, max_image_pixels),
                     upload_limits=UploadLimits(upload, 4 * upload))
    log.info("serving %s on http://%s:%d%s", package, host, port, " (bearer token required)" if token else "")
    uvicorn.run(app, host=host, port=port, log_level="info", lifespan="on", timeout_graceful_shutdown=10)
