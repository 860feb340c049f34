"""Domain errors, and which other exceptions are the user's to fix. The CLI maps them to exit codes in
one place (`memo_edge.cli`)."""

from __future__ import annotations

import errno

__all__ = ["MemoEdgeError", "InputError", "user_error"]


class MemoEdgeError(Exception):
    """A failure the user should read as one line (CLI exit code 1)."""


class InputError(MemoEdgeError):
    """Bad input from the user: options, data, run directories (CLI exit code 2)."""


# OS errors that describe the user's paths, not a bug: one line and exit 2, like any user mistake.
_USER_ERRNOS = {
    errno.EACCES: "permission denied: choose a path you can write to, or change its permissions",
    errno.EPERM: "operation not permitted: choose a path you can write to, or change its permissions",
    errno.EROFS: "read-only file system: choose a path on writable storage",
    errno.EEXIST: "exists and is not a directory: choose another path",
    errno.ENOTDIR: "a part of this path is a file, not a directory: choose another path",
    errno.EISDIR: "is a directory, a file was expected",
    errno.ENOSPC: "no space left on the device: free some space or choose another path",
    errno.EDQUOT: "disk quota exceeded: free some space or choose another path",
}

# The base install predicts; these come with an extra (pyproject.toml), named when a command needs one.
_EXTRAS = {"torch": "train", "torchvision": "train", "matplotlib": "train", "sklearn": "train",
           "onnx": "onnx", "onnxruntime": "onnx", "starlette": "serve", "uvicorn": "serve",
           "prometheus_client": "serve", "python_multipart": "serve"}


def user_error(exc: BaseException, command: str | None) -> InputError | None:
    """The user-side reading of a missing extra or an OS error about the user's paths; None for others."""
    if isinstance(exc, ModuleNotFoundError):  # an ImportError, never an OSError
        extra = _EXTRAS.get((exc.name or "").split(".")[0])
        if extra is not None:
            return InputError(f"memo-edge {command} needs {exc.name}, which this install lacks: "
                              f"pip install 'memo-edge[{extra}]'")
    elif isinstance(exc, OSError) and exc.errno in _USER_ERRNOS:
        return InputError(f"{exc.filename or exc.strerror}: {_USER_ERRNOS[exc.errno]}")
    return None
