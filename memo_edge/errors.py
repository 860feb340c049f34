"""The error contract, declared once: the exceptions library code raises, each with a stable ``code``,
the one table from a code to the CLI's exit status and the service's HTTP status, and ``as_error``,
the one translation of any other exception (a missing extra, an OS error about the user's paths).

A code crosses process boundaries as a word: ``update --json`` writes it in its ``failed`` event and
the service decides the HTTP status of a refused update from it, never from an exception's class name
(as Triton's ``TritonError`` carries its codes between a model's process and the server).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

__all__ = ["CODES", "Code", "MemoEdgeError", "InputError", "InvalidValue", "BudgetError", "as_error", "code_of",
           "exit_status", "http_status", "user_error"]


@dataclass(frozen=True)
class Code:
    exit_status: int  # of the CLI: 2 for what the user can fix, 1 for a failure
    http_status: int  # of the service
    meaning: str


# The closed set. Codes are part of the interface (scripts and HTTP clients branch on them): add, never rename.
CODES: dict[str, Code] = {
    "bad_input": Code(2, 400, "an option, a request or the data is wrong; fix it and retry"),
    "budget": Code(2, 400, "the memory budget cannot hold what was asked"),
    "unauthorized": Code(2, 401, "a missing or wrong bearer token"),
    "not_found": Code(2, 404, "no such job or endpoint"),
    "bad_method": Code(2, 405, "the endpoint does not take this HTTP method"),
    "busy": Code(2, 409, "another writer holds the package (or another update runs); retry when it ends"),
    "read_only": Code(2, 409, "the package (or the storage beside it) cannot be written by this process"),
    "corrupt": Code(2, 409, "the package is damaged, from an unknown format, or unsafe to read"),
    "conflict": Code(2, 409, "the package's state refuses the change (nothing to roll back to)"),
    "too_large": Code(2, 413, "a request over the service's limits"),
    "unsupported_media": Code(2, 415, "a body of a content type the endpoint does not take"),
    "missing_extra": Code(2, 503, "this install lacks an extra the command needs (pip install 'memo-edge[...]')"),
    "no_space": Code(2, 507, "no space left on the storage"),
    "unavailable": Code(1, 503, "the service cannot do this now (a child process would not start)"),
    "failed": Code(1, 500, "an operation failed for a reason given in one line (a backend, a TensorRT build)"),
    "internal": Code(1, 500, "a bug: the traceback is in the log"),
}


def exit_status(code: str) -> int:
    return CODES[code].exit_status


def http_status(code: str) -> int:
    return CODES[code].http_status


class MemoEdgeError(Exception):
    """A failure the user should read as one line (CLI exit status 1 unless its code says otherwise).

    ``code`` is the class's unless an instance names another of ``CODES``."""

    code = "failed"

    def __init__(self, *args: object, code: str | None = None) -> None:
        super().__init__(*args)
        if code is not None:
            if code not in CODES:
                raise ValueError(f"unknown error code {code!r}; choose from {', '.join(CODES)}")
            self.code = code


class InputError(MemoEdgeError):
    """Bad input from the user: options, data, run directories (CLI exit status 2)."""

    code = "bad_input"


class InvalidValue(InputError, ValueError):
    """A value a pure layer refuses (a codec spec, a shape profile): a ValueError by the house style of
    argument checks, and the user's mistake, so no caller needs to translate it."""


class BudgetError(InputError):
    """The memory budget cannot hold a task (its branch and at least one exemplar per class)."""

    code = "budget"


# OS errors that describe the user's paths, not a bug: one line and exit 2, like any user mistake.
_USER_ERRNOS = {
    errno.EACCES: ("read_only", "permission denied: choose a path you can write to, or change its permissions"),
    errno.EPERM: ("read_only", "operation not permitted: choose a path you can write to, or change its permissions"),
    errno.EROFS: ("read_only", "read-only file system: choose a path on writable storage"),
    errno.EEXIST: ("bad_input", "exists and is not a directory: choose another path"),
    errno.ENOTDIR: ("bad_input", "a part of this path is a file, not a directory: choose another path"),
    errno.EISDIR: ("bad_input", "is a directory, a file was expected"),
    errno.ENOSPC: ("no_space", "no space left on the device: free some space or choose another path"),
    errno.EDQUOT: ("no_space", "disk quota exceeded: free some space or choose another path"),
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
                              f"pip install 'memo-edge[{extra}]'", code="missing_extra")
    elif isinstance(exc, OSError) and exc.errno in _USER_ERRNOS:
        code, advice = _USER_ERRNOS[exc.errno]
        return InputError(f"{exc.filename or exc.strerror}: {advice}", code=code)
    return None


def as_error(exc: BaseException, command: str | None = None) -> MemoEdgeError | None:
    """The one translation: ``exc`` itself when it is a declared error, its user-side reading (a missing
    extra, an OS error about the user's paths), or None for a bug (code ``internal``)."""
    if isinstance(exc, MemoEdgeError):
        return exc
    return user_error(exc, command)


def code_of(exc: BaseException, command: str | None = None) -> str:
    error = as_error(exc, command)
    return "internal" if error is None else error.code
