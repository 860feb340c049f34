"""Update jobs: ``memo-edge update --json`` in a child process, one at a time, watched from the service.

Training imports torch and may crash or run out of memory; in a child process it does neither to the
service, which stays torch-free and keeps answering with the version it serves. The child is the
ordinary ``memo-edge update`` (same checks, same writer lock, same commit), started at a lower CPU
priority so predictions keep their share. It reports JSON lines on stdout (``checked``, ``epoch``,
``exporting``, ``committed`` or ``failed``); ``start`` waits for ``checked`` so that a refused update
(bad data, a class-name clash, a budget that cannot fit, another writer) is the request's 4xx, not a
failed job. Jobs live in memory: a restarted service forgets them (the package keeps the versions).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from memo_edge.errors import CODES
from memo_edge.options import UpdateOptions
from memo_edge.serve.inputs import RequestError
from memo_edge.utils.process import child_env

__all__ = ["Job", "UpdateJobs"]

log = logging.getLogger(__name__)
NICENESS = 10  # below the service, so training takes the CPU time predictions leave
_STOP_GRACE_S = 10.0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Job:
    id: str
    options: UpdateOptions
    pid: int
    state: str = "checking"  # checking -> training -> exporting -> succeeded | failed
    started: str = field(default_factory=_now)
    finished: str | None = None
    parent: int | None = None  # the version it learns on top of
    version: int | None = None  # the version it committed
    classes: list[str] = field(default_factory=list)
    images: int | None = None
    epoch: int = 0
    loss: float | None = None
    error: str | None = None  # one line, when it failed
    code: str | None = None  # the error's stable code (memo_edge.errors.CODES), when it failed

    @property
    def done(self) -> bool:
        return self.state in ("succeeded", "failed")

    @property
    def outcome(self) -> str | None:
        """None while it runs; refused when it failed its checks before any training."""
        if not self.done:
            return None
        return "refused" if self.state == "failed" and self.parent is None else self.state

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "classes": self.classes, "images": self.images,
                "progress": {"epoch": self.epoch, "epochs": self.options.epochs, "loss": self.loss},
                "parent": self.parent, "version": self.version, "error": self.error, "code": self.code,
                "pid": self.pid,
                "started": self.started, "finished": self.finished}


class UpdateJobs:
    """At most one update job at a time; the last ``keep`` jobs stay visible."""

    def __init__(self, root: Path, *, on_commit: Callable[[int], Awaitable[None]],
                 on_change: Callable[[Job], None] | None = None, keep: int = 16,
                 command: list[str] | None = None) -> None:
        self.root = Path(root)
        self.on_commit, self.on_change, self.keep = on_commit, on_change, keep  # on_change: started, ended
        self.command = command or [sys.executable, "-m", "memo_edge", "update"]
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._running: tuple[Job, asyncio.subprocess.Process, asyncio.Task[None]] | None = None
        self._reserved = False
        self._closing = False

    @property
    def running(self) -> Job | None:
        return None if self._running is None else self._running[0]

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    @contextlib.contextmanager
    def reservation(self):  # type: ignore[no-untyped-def]
        """Claim the one job slot while a request uploads; refused at once when it is taken."""
        if self._reserved or self._running is not None:
            running = self.running
            what = f"job {running.id} is {running.state}" if running else "another update is being uploaded"
            raise RequestError("busy", f"an update is already running ({what}); one at a time")
        self._reserved = True
        try:
            yield
        finally:
            self._reserved = False

    async def start(self, data: str, workdir: Path, options: UpdateOptions) -> Job:
        """Start ``memo-edge update --data DATA`` and return its job once the update passed its checks.

        Takes ``workdir`` (the unpacked upload): it is removed when the job ends. A refused update is
        a ``RequestError`` naming why (409 when another writer holds the package), and no job."""
        argv = [*self.command, str(self.root), "--data", data, "--json", *options.argv()]
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE, env=child_env())
        except OSError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise RequestError("unavailable", f"cannot start the update process ({exc})") from None
        with contextlib.suppress(OSError):  # lower priority; nothing is lost where it is not allowed
            os.setpriority(os.PRIO_PROCESS, proc.pid, NICENESS)
        job = Job(uuid.uuid4().hex[:12], options, proc.pid)
        checked = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._watch(job, proc, workdir, data, checked))
        self._running = (job, proc, task)
        if self.on_change is not None:
            self.on_change(job)
        self._jobs[job.id] = job
        while len(self._jobs) > self.keep:
            self._jobs.popitem(last=False)
        await asyncio.shield(checked)  # a client that goes away does not stop the job
        if job.state == "failed" and job.parent is None:  # refused before any work: the request's error
            self._jobs.pop(job.id, None)
            raise RequestError(job.code or "internal", job.error or "the update was refused")
        shown = ", ".join(job.classes[:8]) + (f" and {len(job.classes) - 8} more" if len(job.classes) > 8 else "")
        log.info("update job %s: %d images of %s, on version %s (pid %d)", job.id, job.images or 0, shown,
                 job.parent, job.pid)
        return job

    async def _watch(self, job: Job, proc: asyncio.subprocess.Process, workdir: Path, data: str,
                     checked: asyncio.Future[None]) -> None:
        errors: collections.deque[str] = collections.deque(maxlen=20)
        committed: int | None = None
        try:
            stderr = asyncio.create_task(self._read_stderr(job, proc, errors))
            assert proc.stdout is not None
            async for raw in proc.stdout:
                event = _parse(raw)
                kind = event.get("event")
                if kind == "checked":
                    job.state, job.parent = "training", event.get("version")
                    job.classes, job.images = list(event.get("classes", [])), event.get("images")
                    if not checked.done():
                        checked.set_result(None)
                elif kind == "epoch":
                    job.epoch, job.loss = int(event.get("epoch", 0)), event.get("loss")
                elif kind == "exporting":
                    job.state = "exporting"
                elif kind == "committed":
                    committed = int(event["version"])
                elif kind == "failed":  # the upload's temporary path means nothing to the client
                    job.error = str(event.get("error")).replace(data, "the upload").replace(str(workdir), "the upload")
                    said = event.get("code")  # the child's; its HTTP status is the one memo_edge.errors gives it
                    job.code = said if said in CODES else "internal"
            code = await proc.wait()
            await stderr
            if code == 0 and committed is not None:
                job.version = committed
                try:
                    await self.on_commit(committed)
                except Exception as exc:  # noqa: BLE001 - committed all the same; the swap is retried
                    log.error("update job %s committed version %d, which the service could not load yet: %s",
                              job.id, committed, exc)
                job.state = "succeeded"
            else:
                job.state = "failed"
                stopped = "the service stopped before the update finished; nothing was committed"
                job.error = job.error or (stopped if self._closing else _exit_reason(code, errors))
                job.code = job.code or ("unavailable" if self._closing else "internal")
        except BaseException as exc:  # the watcher itself failed or was cancelled: never leave "running"
            job.state, job.error = "failed", job.error or f"the service stopped watching the update ({exc!r})"
            job.code = job.code or "internal"
            raise
        finally:
            job.finished = _now()
            shutil.rmtree(workdir, ignore_errors=True)
            self._running = None
            if not checked.done():
                checked.set_result(None)
            if job.state == "failed":
                log.warning("update job %s %s: %s", job.id, job.outcome, job.error)
            if self.on_change is not None:
                self.on_change(job)

    async def _read_stderr(self, job: Job, proc: asyncio.subprocess.Process, lines: collections.deque[str]) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:  # read all of it: a full pipe would stall the child
            text = raw.decode(errors="replace").rstrip()
            if text:
                lines.append(text)
                log.info("update job %s: %s", job.id, text)

    async def close(self) -> None:
        """Stop a running job (SIGINT: the update removes what it wrote), then SIGKILL after a grace period."""
        self._closing = True
        if self._running is None:
            return
        job, proc, task = self._running
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(asyncio.shield(task), _STOP_GRACE_S)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await asyncio.gather(task, return_exceptions=True)


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        event = json.loads(raw)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


def _exit_reason(code: int, stderr: collections.deque[str]) -> str:
    said = next((line.removeprefix("Error: ") for line in reversed(stderr) if line.startswith("Error: ")), None)
    if said is not None:
        return said
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the update process was killed by {name}"
    tail = stderr[-1] if stderr else "no message"
    return f"the update process exited with code {code} ({tail})"
